# Sourced by the run scripts: makes (once) and activates a virtual
# environment with TensorFlow and sparse_ops (editable) plus the given extras.
#   VENV (default .venv)  TF_PACKAGE (default tensorflow-cpu==2.21.0; use
#   tensorflow==2.21.0 for the GPU build)
set -euo pipefail
VENV=${VENV:-.venv}
TF_PACKAGE=${TF_PACKAGE:-tensorflow-cpu==2.21.0}
EXTRAS=${1:-test}
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
if ! python -c "import tensorflow" 2>/dev/null; then
  echo "== installing $TF_PACKAGE (about 1.6 GB)"
  python -m pip install -q "$TF_PACKAGE"
fi
echo "== building and installing sparse_ops[$EXTRAS]"
python -m pip install -q -e ".[$EXTRAS]"
