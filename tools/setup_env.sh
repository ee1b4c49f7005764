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
    cat setup.py pyproject.toml kernels/sources.bzl kernels/cuda/nvcc_flags.txt
  } | sha256sum | cut -d' ' -f1
}
STAMP_FILE="$VENV/.sparse_ops_build"
STAMP=$(build_stamp)
EXTRAS_FILE="$VENV/.sparse_ops_extras.$EXTRAS"
EXTRAS_STAMP=$(sha256sum pyproject.toml | cut -d' ' -f1)
# The library in the source tree, built here for this TensorFlow (another
# environment may have rebuilt it since).
library_matches() {
  compgen -G "sparse_ops/_sparse_ops*.so" >/dev/null && python - <<'EOF'
import importlib.metadata as m, re, sys
try:
    built = re.search(r"TF_VERSION = '(.*)'", open("sparse_ops/_build_info.py").read())[1]
except (OSError, TypeError):
    sys.exit(1)
versions = []
for name in ("tensorflow", "tensorflow-cpu"):
    try:
        versions.append(m.version(name))
    except m.PackageNotFoundError:
        pass
sys.exit(0 if built in versions else 1)
EOF
}
# The requirements of the extras (comma-separated names), read from
# pyproject.toml without installing the package.
extras_requirements() {
  python - "$EXTRAS" <<'EOF'
import re, sys
text = open("pyproject.toml").read()
table = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
for extra in sys.argv[1].split(","):
    found = re.search(r"^" + re.escape(extra.strip()) + r"\s*=\s*\[(.*?)\]\s*(?:#[^\n]*)?$",
                      table, re.M | re.S)
    if found:
        print(" ".join(re.findall(r'"([^"]+)"', found[1])))
EOF
}
if [ -f "$STAMP_FILE" ] && [ "$(cat "$STAMP_FILE")" = "$STAMP" ] && library_matches; then
  echo "== sparse_ops is up to date in $VENV (no rebuild)"
  if [ ! -f "$EXTRAS_FILE" ] || [ "$(cat "$EXTRAS_FILE")" != "$EXTRAS_STAMP" ]; then
    REQUIREMENTS=$(extras_requirements)
    if [ -n "$REQUIREMENTS" ]; then
      echo "== installing the [$EXTRAS] extras"
      # shellcheck disable=SC2086
      python -m pip install -q $REQUIREMENTS
    fi
    echo "$EXTRAS_STAMP" > "$EXTRAS_FILE"
  fi
else
  echo "== building and installing sparse_ops[$EXTRAS] (about 1-2 minutes)"
  python -m pip install -q -e ".[$EXTRAS]"
  echo "$STAMP" > "$STAMP_FILE"
  echo "$EXTRAS_STAMP" > "$EXTRAS_FILE"
fi
