#!/usr/bin/env bash
# Sets up a virtual environment (see setup_env.sh) and runs the test suite.
# Extra arguments go to pytest (e.g. -m slow for the long tests).
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/setup_env.sh test
python -m pytest tests -q -p no:cacheprovider "$@"
