"""The C++ sources and compile flags of the op library: the one list.

Read by kernels/BUILD (load("//kernels:sources.bzl", ...)), by setup.py
(which parses it as Python: keep it to NAME = literal assignments, a list of
strings or a string, no expressions) and by ./configure.sh (DEFAULT_MARCH,
with sed: keep that assignment on one line). Paths are relative to kernels/.
setup.py refuses to build while a .cc or .h under kernels/ is in none of
these lists. The nvcc flags are in kernels/cuda/nvcc_flags.txt (also read by
both builds).
"""

# --- Flags -------------------------------------------------------------------

# The -march of every C++ source on x86-64: the baseline, so that one build
# runs on any x86-64 CPU; "native" on other machines. The vector kernels are
# built for AVX2 and AVX-512 besides, whatever the value, and picked at run
# time (core/isa.h: the convolution's products and every loop run through
# VectorizedFor). SPARSE_OPS_MARCH overrides it (setup.py and ./configure.sh;
# empty or "none" for no -march).
DEFAULT_MARCH = "x86-64"

# Flags of every C++ source, after TensorFlow's tf.sysconfig.get_compile_flags()
# (whose C++ ABI and Eigen alignment the library must share) and before
# -march. -O3 applies in every Bazel --compilation_mode.
COPTS = [
    "-std=c++17",
    "-O3",
    "-fvisibility=hidden",
    "-Wno-deprecated-declarations",
    "-Wno-sign-compare",
]

# Defines of the TensorFlow kernels when the CUDA kernels are built with them
# (SPARSE_OPS_CUDA=1, bazel --config=cuda).
CUDA_DEFINES = [
    "GOOGLE_CUDA=1",
]

# --- Sources -----------------------------------------------------------------

# The framework-free core (Bazel: //kernels:core).
CORE_SRCS = [
    "core/attention.cc",
    "core/conv.cc",
    "core/coordinates.cc",
    "core/depthwise.cc",
    "core/kernel_map.cc",
    "core/points.cc",
    "core/pool.cc",
    "core/voxelize.cc",
]

CORE_HDRS = [
    "core/allocate.h",
    "core/attention.h",
    "core/conv.h",
    "core/coordinates.h",
    "core/depthwise.h",
    "core/isa.h",
    "core/kernel_map.h",
    "core/key_layout.h",
    "core/parallel.h",
    "core/points.h",
    "core/pool.h",
    "core/status.h",
    "core/voxel_grid.h",
    "core/voxelize.h",
]

# The op registrations and TensorFlow kernels (Bazel:
# //kernels:sparse_ops_kernels). The *_gpu.cc files are empty without
# GOOGLE_CUDA.
KERNEL_SRCS = [
    "ops/sparse_ops.cc",
    "tf/attention_kernels.cc",
    "tf/attention_kernels_gpu.cc",
    "tf/conv_kernels.cc",
    "tf/conv_kernels_gpu.cc",
    "tf/coordinate_kernels.cc",
    "tf/coordinate_kernels_gpu.cc",
    "tf/depthwise_kernels.cc",
    "tf/depthwise_kernels_gpu.cc",
    "tf/point_kernels.cc",
    "tf/point_kernels_gpu.cc",
    "tf/pool_kernels.cc",
    "tf/pool_kernels_gpu.cc",
    "tf/voxelize_kernels.cc",
    "tf/voxelize_kernels_gpu.cc",
]

KERNEL_HDRS = [
    "tf/depthwise_glue.h",
    "tf/glue.h",
    "tf/gpu_glue.h",
    "tf/voxelize_glue.h",
]

# The CUDA core, compiled by nvcc (SPARSE_OPS_CUDA=1, bazel --config=cuda).
CUDA_SRCS = [
    "cuda/attention_gpu.cu.cc",
    "cuda/conv_gpu.cu.cc",
    "cuda/depthwise_gpu.cu.cc",
    "cuda/kernel_map_gpu.cu.cc",
    "cuda/pool_gpu.cu.cc",
    "cuda/voxelize_gpu.cu.cc",
]

CUDA_HDRS = [
    "cuda/attention_gpu.h",
    "cuda/core_gpu.h",
    "cuda/depthwise_gpu.h",
    "cuda/launch.cu.h",
    "cuda/pool_gpu.h",
    "cuda/voxelize_gpu.h",
]

# --- Tests (not in the library) ----------------------------------------------

# cc_test //kernels:<name> of core/<name>.cc.
CORE_TESTS = [
    "attention_test",
    "core_test",
    "points_test",
]

# Programs with a main() run on a GPU by kernels/cuda/device_check.sh:
# cuda/<name>.cu.cc.
CUDA_TESTS = [
    "attention_gpu_test",
    "gpu_core_test",
    "pool_gpu_test",
]

TEST_HDRS = [
    "core/test_harness.h",
    "cuda/gpu_test_harness.h",
]
