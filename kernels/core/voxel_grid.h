// The grid row of one raw point, in one place for both cores (g++ and
// nvcc): (batch, floor(position / voxel_size)) as int32, or why the point
// has none. Every check compares doubles, so the CPU and the GPU accept and
// refuse the same points.
#ifndef SPARSE_OPS_KERNELS_CORE_VOXEL_GRID_H_
#define SPARSE_OPS_KERNELS_CORE_VOXEL_GRID_H_

#include <cmath>
#include <cstdint>

#include "kernels/core/key_layout.h"  // SPARSE_OPS_HOST_DEVICE

namespace sparse_ops {

enum VoxelPointProblem : int32_t {
  kVoxelPointOk = 0,
  kVoxelBadBatch = 1,    // not a whole number in [0, 2^31)
  kVoxelNonFinite = 2,   // a NaN or infinite position
  kVoxelOutOfRange = 3,  // floor(position / voxel_size) outside int32
};

struct VoxelPointError {
  int64_t row;
  int32_t problem;  // VoxelPointProblem
  int32_t column;   // of the position (0: the batch)
  double value;     // the batch index or position
  double quotient;  // floor(position / voxel_size), for kVoxelOutOfRange
};

SPARSE_OPS_HOST_DEVICE inline double FloorOf(double v) {
#if defined(__CUDA_ARCH__)
  return floor(v);
#else
  return std::floor(v);
#endif
}

// Row i of points [n, dims] into grid_row [dims]; voxel_size has dims - 1
// entries, finite and > 0.
template <typename P>
SPARSE_OPS_HOST_DEVICE inline VoxelPointError GridRowOf(
    const P* points, int64_t i, int dims, const double* voxel_size,
    int32_t* grid_row) {
  constexpr double kLo = -2147483648.0, kHi = 2147483647.0;
  const P* p = points + i * dims;
  const double batch = static_cast<double>(p[0]);
  if (!(batch >= 0 && batch <= kHi && batch == FloorOf(batch))) {
    return {i, kVoxelBadBatch, 0, batch, 0};
  }
  grid_row[0] = static_cast<int32_t>(batch);
  for (int a = 1; a < dims; ++a) {
    const double v = static_cast<double>(p[a]);
    if (!(v - v == 0)) return {i, kVoxelNonFinite, a, v, 0};  // NaN or infinite
    const double q = FloorOf(v / voxel_size[a - 1]);
    if (!(q >= kLo && q <= kHi)) return {i, kVoxelOutOfRange, a, v, q};
    grid_row[a] = static_cast<int32_t>(q);
  }
  return {i, kVoxelPointOk, 0, 0, 0};
}

}  // namespace sparse_ops

#endif  // SPARSE_OPS_KERNELS_CORE_VOXEL_GRID_H_
