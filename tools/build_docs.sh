#!/usr/bin/env bash
# Builds the documentation site into site/ (mkdocs-material + mkdocstrings).
#
# The docs need neither TensorFlow nor the compiled op library: mkdocstrings'
# Python handler (griffe) reads the docstrings from the source files without
# importing them. A small virtual environment, .venv-docs (or $DOCS_VENV),
# holds the pinned tools; it is made on the first run and reused after.
# --strict: every warning (a broken link, a reference that does not resolve,
# a docstring griffe cannot parse) fails the build.
#   bash tools/build_docs.sh            # build into site/
#   bash tools/build_docs.sh serve      # live preview on http://127.0.0.1:8000
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DOCS_VENV:-.venv-docs}
export NO_MKDOCS_2_WARNING=1  # mkdocs-material's banner about its successor
REQUIREMENTS="mkdocs==1.6.1 mkdocs-material==9.8.2 mkdocstrings[python]==1.0.8 mkdocstrings-python==2.0.11 griffelib==2.4.1 mkdocs-autorefs==1.4.5 pymdown-extensions==13.1.2 black==26.10.1"
STAMP="$VENV/.docs_requirements"
if [ ! -x "$VENV/bin/mkdocs" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$REQUIREMENTS" ]; then
  echo "== installing the docs tools into $VENV"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q $REQUIREMENTS
  echo "$REQUIREMENTS" > "$STAMP"
fi
if [ "${1:-}" = "serve" ]; then
  exec "$VENV/bin/mkdocs" serve --strict
fi
"$VENV/bin/mkdocs" build --strict --clean -d site
echo "== docs built into $(pwd)/site (open site/index.html)"
