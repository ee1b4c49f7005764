#!/usr/bin/env bash
# CI's second job: the test suite against the oldest TensorFlow sparse_ops
# supports (OLDEST_TESTED_TF in sparse_ops/_version.py), in a copy of the
# tree so that its op library build leaves the main one alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OLDEST=$(sed -n 's/^OLDEST_TESTED_TF = "\(.*\)"/\1/p' sparse_ops/_version.py)
WORK="${OLDEST_TF_WORKDIR:-$(mktemp -d)}"
mkdir -p "$WORK"
echo "== TensorFlow $OLDEST in $WORK"
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$WORK"
cd "$WORK"
# TensorFlow before 2.18 was built against numpy 1.
CONSTRAINTS="$WORK/constraints.txt"
python3 - "$OLDEST" > "$CONSTRAINTS" <<'PY'
import sys
version = tuple(int(p) for p in sys.argv[1].split(".")[:2])
print("numpy<2" if version < (2, 18) else "")
PY
PIP_CONSTRAINT="$CONSTRAINTS" VENV=.venv-oldest TF_PACKAGE="tensorflow-cpu==$OLDEST" \
  bash tools/run_tests.sh "$@"
