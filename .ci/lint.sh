#!/usr/bin/env bash
# Python lint: ruff (pinned, in its own venv .venv-lint) with the rules of
# pyproject.toml's [tool.ruff] over the package, the tests and the programs.
set -euo pipefail
cd "$(dirname "$0")/.."
RUFF_VERSION=0.17.5
if [ ! -x .venv-lint/bin/ruff ] || \
    [ "$(.venv-lint/bin/ruff --version)" != "ruff ${RUFF_VERSION}" ]; then
  python3 -m venv .venv-lint
  .venv-lint/bin/pip install -q "ruff==${RUFF_VERSION}"
fi
.venv-lint/bin/ruff check --no-cache sparse_ops tests python tools
echo "== lint passed (ruff ${RUFF_VERSION})"
