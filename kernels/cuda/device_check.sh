#!/usr/bin/env bash
# Builds and runs every check of the framework-free CUDA core on a GPU
# machine (no TensorFlow needed), in well under 5 minutes on an H100:
#   the core test (kernel map, convolution, gradients, errors, the PEERS
#   shell timings), the pooling test and the attention test, each against
#   the CPU core, twice;
#   compute-sanitizer memcheck on their small cases and racecheck on a
#   tiny one.
# Usage: bash kernels/cuda/device_check.sh [output directory]
# Environment: SPARSE_OPS_CUDA_ARCHS (default: the GPU's own, via
# nvidia-smi), NVCC (default nvcc on PATH or /usr/local/cuda/bin/nvcc).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
OUT="${1:-${OUT:-/tmp/sparse_ops_device_check}}"
mkdir -p "$OUT"
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
SANITIZER="$(command -v compute-sanitizer || echo "$(dirname "$NVCC")/compute-sanitizer")"
ARCH="${SPARSE_OPS_CUDA_ARCHS:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d .)}"
ARCH="${ARCH:-90}"
FLAGS=(-std=c++17 -O3 --expt-relaxed-constexpr -Wno-deprecated-gpu-targets
       "-gencode=arch=compute_$ARCH,code=sm_$ARCH" -I. -x cu)
BIN="$OUT/bin"; mkdir -p "$BIN"
status=0
run() {  # name, command...: logs to $OUT/name.log, records failures
  local name="$1"; shift
  echo "== $name"
  local start=$SECONDS
  if "$@" >"$OUT/$name.log" 2>&1; then
    echo "   ok ($((SECONDS - start)) s): $(grep -E 'RESULT|ERROR SUMMARY' "$OUT/$name.log" | tail -1)"
  else
    echo "   FAILED ($((SECONDS - start)) s), last lines:"; tail -15 "$OUT/$name.log"; status=1
  fi
}
nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv | tee "$OUT/gpu.txt"
"$NVCC" --version | tail -1 | tee -a "$OUT/gpu.txt"
run build_core "$NVCC" "${FLAGS[@]}" kernels/cuda/kernel_map_gpu.cu.cc kernels/cuda/conv_gpu.cu.cc kernels/cuda/pool_gpu.cu.cc \
  kernels/cuda/attention_gpu.cu.cc kernels/cuda/voxelize_gpu.cu.cc kernels/cuda/depthwise_gpu.cu.cc kernels/cuda/gpu_core_test.cu.cc \
  kernels/core/coordinates.cc kernels/core/points.cc kernels/core/voxelize.cc kernels/core/depthwise.cc kernels/core/kernel_map.cc -o "$BIN/gpu_core_test"
run build_pool "$NVCC" "${FLAGS[@]}" kernels/cuda/kernel_map_gpu.cu.cc kernels/cuda/pool_gpu.cu.cc \
  kernels/cuda/pool_gpu_test.cu.cc kernels/core/coordinates.cc kernels/core/kernel_map.cc \
  kernels/core/pool.cc -o "$BIN/pool_gpu_test"
run build_attention "$NVCC" "${FLAGS[@]}" kernels/cuda/attention_gpu.cu.cc \
  kernels/cuda/attention_gpu_test.cu.cc kernels/core/attention.cc -o "$BIN/attention_gpu_test"
run core_test "$BIN/gpu_core_test"
run pool_test "$BIN/pool_gpu_test"
run attention_test "$BIN/attention_gpu_test"
run core_memcheck "$SANITIZER" --tool memcheck --error-exitcode 1 "$BIN/gpu_core_test" --small
run pool_memcheck "$SANITIZER" --tool memcheck --error-exitcode 1 "$BIN/pool_gpu_test"
run attention_memcheck "$SANITIZER" --tool memcheck --error-exitcode 1 "$BIN/attention_gpu_test"
run core_racecheck "$SANITIZER" --tool racecheck --error-exitcode 1 "$BIN/gpu_core_test" --tiny
echo "== device check $([[ $status == 0 ]] && echo passed || echo FAILED); logs in $OUT"
exit $status
