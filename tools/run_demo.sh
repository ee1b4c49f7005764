#!/usr/bin/env bash
# Sets up a virtual environment (see setup_env.sh) and runs the demo: a sparse
# conv net on a real 3D scan next to its dense TensorFlow twin.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/setup_env.sh examples
python python/examples/demo.py "$@"
