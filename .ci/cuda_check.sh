#!/usr/bin/env bash
# CI's CUDA job (no GPU needed): builds sparse_ops with SPARSE_OPS_CUDA=1
# against the `tensorflow` GPU wheel in a copy of the tree, checks that the
# library loads there with every symbol bound, that every op keeps its CPU
# kernel and a GPU kernel, runs the CPU tests of the
# convolution and the `gpu` tests (skipped without a GPU) on that build,
# and compiles the framework-free CUDA core test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TF_VERSION=$(sed -n "s/^TF_PACKAGE=\${TF_PACKAGE:-tensorflow-cpu==\(.*\)}/\1/p" tools/setup_env.sh)
WORK="${CUDA_CHECK_WORKDIR:-$(mktemp -d)}"
mkdir -p "$WORK"
echo "== CUDA build against tensorflow==$TF_VERSION in $WORK"
# A reused work directory keeps only its virtual environment: files
# deleted from the tree must not linger there (setup.py globs sources).
find "$WORK" -mindepth 1 -maxdepth 1 ! -name .venv-cuda -exec rm -rf {} +
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$WORK"
cd "$WORK"
# One architecture keeps the CI compile short; the default list is in
# kernels/cuda/nvcc_flags.txt.
export SPARSE_OPS_CUDA=1 SPARSE_OPS_CUDA_ARCHS="${SPARSE_OPS_CUDA_ARCHS:-90}"
VENV=.venv-cuda TF_PACKAGE="tensorflow==$TF_VERSION" . tools/setup_env.sh test
python tools/check_gpu_kernels.py --require-all
# The CPU kernels of this build (the whole suite ran on it once: 2047
# passed), and the GPU tests, which skip here.
python -m pytest -q -p no:cacheprovider tests/test_conv.py tests/test_models.py \
  tests/test_gpu.py
echo "== nvcc: the CUDA core's test programs (run on a GPU by kernels/cuda/device_check.sh)"
NVCC_TEST_FLAGS=(-std=c++17 -O3 --expt-relaxed-constexpr -arch=sm_90 -I. -x cu)
nvcc "${NVCC_TEST_FLAGS[@]}" kernels/cuda/kernel_map_gpu.cu.cc kernels/cuda/conv_gpu.cu.cc kernels/cuda/pool_gpu.cu.cc \
  kernels/cuda/attention_gpu.cu.cc kernels/cuda/voxelize_gpu.cu.cc kernels/cuda/depthwise_gpu.cu.cc kernels/cuda/gpu_core_test.cu.cc \
  kernels/core/coordinates.cc kernels/core/points.cc kernels/core/voxelize.cc kernels/core/depthwise.cc kernels/core/kernel_map.cc -o gpu_core_test
nvcc "${NVCC_TEST_FLAGS[@]}" kernels/cuda/kernel_map_gpu.cu.cc kernels/cuda/pool_gpu.cu.cc \
  kernels/cuda/pool_gpu_test.cu.cc kernels/core/coordinates.cc kernels/core/kernel_map.cc \
  kernels/core/pool.cc -o pool_gpu_test
nvcc "${NVCC_TEST_FLAGS[@]}" kernels/cuda/attention_gpu.cu.cc kernels/cuda/attention_gpu_test.cu.cc \
  kernels/core/attention.cc -o attention_gpu_test
echo "== CUDA job done"
