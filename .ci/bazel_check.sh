#!/usr/bin/env bash
# Offline check of the Bazel build: configure, build everything, run the
# tests, and load the op library into TensorFlow. Run from the repository
# root (or anywhere; it cd's there):
#
#   .ci/bazel_check.sh
#
# Needs: python3 with TensorFlow, g++, and Bazel 4.2.3 from Debian
# (bazel-bootstrap + bazel-rules-java, installed here with apt-get when
# `bazel` is missing). Nothing is downloaded by Bazel itself.
#
# Environment: BAZEL_JOBS (2), PYTHON_BIN_PATH (see below), and configure.sh's
# SPARSE_OPS_MARCH / SPARSE_OPS_BAZEL_ROOT (Bazel's output_user_root,
# default $HOME/.cache/bazel-sparse-ops: kept between runs, so reruns are
# incremental).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
JOBS="${BAZEL_JOBS:-2}"
export DEBIAN_FRONTEND=noninteractive

# The Python whose TensorFlow to build against: PYTHON_BIN_PATH, else the
# first of python3 and the run scripts' virtual environments (.ci/run makes
# .venv-ci, tools/setup_env.sh .venv) that imports tensorflow.
if [[ -z "${PYTHON_BIN_PATH:-}" ]]; then
  for candidate in python3 .venv-ci/bin/python .venv/bin/python; do
    if command -v "$candidate" >/dev/null 2>&1 &&
        TF_CPP_MIN_LOG_LEVEL=3 "$candidate" -c "import tensorflow" >/dev/null 2>&1; then
      PYTHON_BIN_PATH="$(cd "$(dirname "$(command -v "$candidate")")" && pwd)/$(basename "$candidate")"
      break
    fi
  done
fi
if [[ -z "${PYTHON_BIN_PATH:-}" ]]; then
  echo "bazel_check.sh: no Python with TensorFlow found (set PYTHON_BIN_PATH)" >&2
  exit 1
fi
export PYTHON_BIN_PATH
PYTHON="$PYTHON_BIN_PATH"

step() { printf '\n=== %s (%ss)\n' "$*" "$SECONDS"; }

if ! command -v bazel >/dev/null 2>&1 || [[ ! -f /usr/share/bazel/rules/java/WORKSPACE ]]; then
  step "installing bazel-bootstrap and bazel-rules-java"
  SUDO=""
  [[ "$(id -u)" == 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends bazel-bootstrap bazel-rules-java
fi

step "configure ($PYTHON)"
./configure.sh

FLAGS=(--jobs="$JOBS" --local_cpu_resources="$JOBS" --color=no --curses=no
       --show_progress_rate_limit=30)

step "bazel build //..."
bazel build "${FLAGS[@]}" //...

step "bazel test //..."
bazel test "${FLAGS[@]}" //...

step "tf.load_op_library(bazel-bin/_sparse_ops.so)"
SO="$(bazel info bazel-bin 2>/dev/null)/_sparse_ops.so"
TF_CPP_MIN_LOG_LEVEL=2 "$PYTHON" - "$SO" <<'EOF'
import sys

import numpy as np
import tensorflow as tf

lib = tf.load_op_library(sys.argv[1])
ops = sorted(n for n in dir(lib) if n.startswith("SparseOps_"))
expected = ["SparseOps_Conv", "SparseOps_ConvBackpropInput",
            "SparseOps_ConvBackpropKernel", "SparseOps_GenerativeCoordinates",
            "SparseOps_KernelMap", "SparseOps_StridedCoordinates"]
missing = sorted(set(expected) - set(ops))
assert not missing, f"ops missing from {sys.argv[1]}: {missing}"

# A 3x3x3 kernel map on three sites, all within one step of each other
# (x, y and the diagonal), plus one far away: 3 * 3 + 1 pairs.
coords = tf.constant([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0],
                      [0, 5, 5, 5]], tf.int32)
offsets = tf.constant([[x, y, z] for x in (-1, 0, 1) for y in (-1, 0, 1)
                       for z in (-1, 0, 1)], tf.int32)
splits, in_rows, out_rows = lib.sparse_ops_kernel_map(
    coords, coords, offsets, tf.constant([1, 1, 1], tf.int32))
pairs = sorted(zip(in_rows.numpy().tolist(), out_rows.numpy().tolist()))
want = sorted([(i, o) for i in range(3) for o in range(3)] + [(3, 3)])
assert int(splits.numpy()[-1]) == len(pairs), (splits.numpy(), pairs)
assert pairs == want, pairs
print(f"loaded {sys.argv[1]}: {len(ops)} ops, kernel map OK")
EOF

step "done"
