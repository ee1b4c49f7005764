#!/usr/bin/env bash
# Fails when a C++ or CUDA file under kernels/ is not formatted as
# .clang-format says. clang-format is pinned (the pip wheel, in its own
# virtual environment, kept between runs): another version may format
# differently.
#
#   .ci/format_check.sh          # check
#   .ci/format_check.sh --fix    # reformat in place
#
# Environment: FORMAT_VENV (default ~/.cache/sparse-ops-clang-format-<version>,
# outside the tree so that Bazel's //... does not walk it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CLANG_FORMAT_VERSION=18.1.8
VENV="${FORMAT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/sparse-ops-clang-format-$CLANG_FORMAT_VERSION}"
CF="$VENV/bin/clang-format"
if [[ ! -x "$CF" ]] || [[ "$("$CF" --version)" != *"version $CLANG_FORMAT_VERSION"* ]]; then
  echo "== installing clang-format==$CLANG_FORMAT_VERSION in $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "clang-format==$CLANG_FORMAT_VERSION"
fi
mapfile -t FILES < <(git ls-files 'kernels/*.cc' 'kernels/*.h')
if [[ "${1:-}" == "--fix" ]]; then
  "$CF" -i "${FILES[@]}"
  echo "== formatted ${#FILES[@]} files"
  exit 0
fi
if ! "$CF" --dry-run --Werror "${FILES[@]}"; then
  echo "format_check.sh: run .ci/format_check.sh --fix (clang-format $CLANG_FORMAT_VERSION)" >&2
  exit 1
fi
echo "== format check passed: ${#FILES[@]} files"
