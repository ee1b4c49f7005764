#!/usr/bin/env bash
# The paper's headline experiment in small: sets up a virtual environment (see
# setup_env.sh), then trains the sparse OctNet3-24^2 CNN with density bound
# 0.035 (sparse back-propagation, k-selection attention) on real MNIST next to
# its dense Keras twin and prints test accuracy, time per epoch and peak memory
# of both. Extra arguments go to python/experiments/mnist_density.py.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/setup_env.sh examples
python python/experiments/mnist_density.py --bounds 0.035 --epochs 10 --name main_mnist "$@"
