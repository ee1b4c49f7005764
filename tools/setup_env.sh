# Sourced by the run scripts: makes (once) and activates a virtual
# environment with TensorFlow and sparse_ops (editable) plus the given extras.
#   VENV (default .venv)  TF_PACKAGE (default tensorflow-cpu==2.21.0; use
#   tensorflow==2.21.0 for the GPU build)
# The op library is built again only when its sources, the build settings
# or the installed TensorFlow changed since the last build in this VENV.
set -euo pipefail
VENV=${VENV:-.venv}
TF_PACKAGE=${TF_PACKAGE:-tensorflow-cpu==2.21.0}
EXTRAS=${1:-test}
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
# Installed distributions, read from their metadata (importing TensorFlow
# would take seconds).
installed() {
  python - "$@" <<'EOF'
import importlib.metadata as m, sys
for name in sys.argv[1:]:
    try:
        print(name, m.version(name))
    except m.PackageNotFoundError:
        pass
EOF
}
if [ -z "$(installed tensorflow tensorflow-cpu)" ]; then
  echo "== installing $TF_PACKAGE (about 1.6 GB)"
  python -m pip install -q "$TF_PACKAGE"
fi
# What the build depends on: sources, build files, settings, TensorFlow.
build_stamp() {
  {
    installed tensorflow tensorflow-cpu
    echo "${SPARSE_OPS_MARCH:-} ${SPARSE_OPS_CUDA:-} ${SPARSE_OPS_CXXFLAGS:-}"
    find kernels -type f \( -name '*.cc' -o -name '*.h' \) | LC_ALL=C sort | xargs cat
    cat setup.py pyproject.toml
  } | sha256sum | cut -d' ' -f1
}
STAMP_FILE="$VENV/.sparse_ops_build"
STAMP=$(build_stamp)
EXTRAS_FILE="$VENV/.sparse_ops_extras.$EXTRAS"
EXTRAS_STAMP=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -f "$STAMP_FILE" ] && [ "$(cat "$STAMP_FILE")" = "$STAMP" ] &&
    compgen -G "sparse_ops/_sparse_ops*.so" >/dev/null; then
  echo "== sparse_ops is up to date in $VENV (no rebuild)"
  if [ ! -f "$EXTRAS_FILE" ] || [ "$(cat "$EXTRAS_FILE")" != "$EXTRAS_STAMP" ]; then
    echo "== installing the [$EXTRAS] extras"
    # shellcheck disable=SC2046
    python -m pip install -q $(python -c 'import sys, tomllib
with open("pyproject.toml", "rb") as f:
    print(" ".join(tomllib.load(f)["project"]["optional-dependencies"][sys.argv[1]]))' \
      "$EXTRAS")
    echo "$EXTRAS_STAMP" > "$EXTRAS_FILE"
  fi
else
  echo "== building and installing sparse_ops[$EXTRAS] (about 1-2 minutes)"
  python -m pip install -q -e ".[$EXTRAS]"
  echo "$STAMP" > "$STAMP_FILE"
  echo "$EXTRAS_STAMP" > "$EXTRAS_FILE"
fi
