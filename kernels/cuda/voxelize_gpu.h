// CUDA voxelization of the framework-free core: the GPU twin of
// kernels/core/voxelize.h, with the same sites, order, inverse map, merged
// features and errors (the conventions of core_gpu.h: raw device pointers,
// caller workspace, a stream; nothing allocates).
//
// Grid rows (the first bad point recorded by an atomic min on its row, so
// the CPU's error is reported) -> the key layout of the rows
// (KeyLayoutOf) -> packed keys radix-sorted with the point indices (CUB,
// stable) -> run heads and an inclusive scan: each point's site, each
// site's first position in the sorted order. One host read of the site
// count, then the coordinates, counts and merged features: one thread per
// (site, channel) walks its points in input order (sums in double), so the
// results are the CPU's bit for bit.
//
// Rows whose keys would need more than 63 bits are refused (the CPU then
// sorts by row comparison).
#ifndef SPARSE_OPS_KERNELS_CUDA_VOXELIZE_GPU_H_
#define SPARSE_OPS_KERNELS_CUDA_VOXELIZE_GPU_H_

#include <cstddef>
#include <cstdint>

#include "kernels/core/status.h"
#include "kernels/core/voxelize.h"
#include "kernels/cuda/core_gpu.h"

namespace sparse_ops {
namespace gpu {

// Written by VoxelizeCount; the op reads it back once.
struct VoxelInfo {
  KernelMapInfo keys;   // the key layout (and its width error)
  uint64_t first_bad;   // the first bad point's row (all ones: none)
  VoxelPointError bad;  // why it is bad
  int64_t num_sites;
};

// The CPU op's errors: the first bad point, then keys wider than 63 bits.
Status VoxelInfoStatus(const VoxelInfo& info, const double* voxel_size);

// voxel_size: D host values, checked by the caller (finite, > 0).
template <typename P>
size_t VoxelizeWorkspaceBytes(int64_t n, int dims);
template <typename P>
Status VoxelizeCount(const P* points, int64_t n, int dims,
                     const double* voxel_size, int32_t* inverse,
                     VoxelInfo* info, void* workspace, size_t workspace_bytes,
                     GpuStream stream);

// After the read: coordinates [num_sites, dims], counts [num_sites],
// merged [num_sites, channels] and, for kMax and kFirst, source (nullptr:
// not wanted), as MergeVoxelFeatures.
template <typename T>
Status VoxelizeFill(const T* features, int64_t n, int dims, int64_t channels,
                    int64_t num_sites, VoxelMode mode, int32_t* coordinates,
                    int32_t* counts, T* merged, int32_t* source,
                    void* workspace, size_t workspace_bytes, GpuStream stream);

}  // namespace gpu
}  // namespace sparse_ops

#endif  // SPARSE_OPS_KERNELS_CUDA_VOXELIZE_GPU_H_
