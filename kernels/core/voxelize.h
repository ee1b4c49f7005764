// Voxelization of raw points in the framework-free core: points [n, 1 + D]
// (column 0 the batch index) -> the sites (batch, floor(p / voxel_size)),
// sorted as np.unique(axis=0) sorts them, each point's site, and the
// points' features merged per site.
//
// Steps, so that an op can size its outputs in between:
//   VoxelGrid        the int32 grid row of every point (or the first bad one);
//   FindVoxelSites   points sorted by (site, index): the packed keys of the
//                    grid rows radix-sorted with the point indices (a row
//                    comparison sort when keys would need more than 63
//                    bits), runs of equal rows = sites; each point's site;
//   VoxelCoordinates the sites' coordinates and point counts;
//   MergeVoxelFeatures  per site and channel, the points in input order:
//                    sum / average (in double, as sparse_quantize), max (the
//                    first point holding it; NaN wins, as np.maximum), first.
// Deterministic whatever the thread count.
#ifndef SPARSE_OPS_KERNELS_CORE_VOXELIZE_H_
#define SPARSE_OPS_KERNELS_CORE_VOXELIZE_H_

#include <cstdint>

#include "kernels/core/allocate.h"
#include "kernels/core/parallel.h"
#include "kernels/core/status.h"
#include "kernels/core/voxel_grid.h"

namespace sparse_ops {

enum class VoxelMode { kAverage, kSum, kMax, kFirst };

// The error of a bad point, naming `points`, the row and the value.
Status VoxelPointStatus(const VoxelPointError& error, const double* voxel_size);

// grid [n, dims] = (batch, floor(points[:, a] / voxel_size[a - 1]) for a >= 1)
// as int32, the division in double. Fails naming the first bad point (in
// row order): a position that is NaN or infinite, a batch index that is not
// a whole number in [0, 2^31), a grid coordinate outside int32. voxel_size
// (dims - 1 entries) must be finite and > 0 (checked by the caller).
template <typename P>
Status VoxelGrid(const P* points, int64_t n, int dims, const double* voxel_size,
                 int32_t* grid, const ParallelFor& parallel_for);

// The sites of grid rows [n, dims]: order[j] (j < n) lists the points by
// (site, index), starts[s] (s <= num_sites) where site s begins in order;
// sites are numbered in lexicographic order of their rows.
struct VoxelSites {
  const int32_t* order = nullptr;
  const int64_t* starts = nullptr;
  int64_t num_sites = 0;
};

// Also writes inverse[i] = the site of point i. Memory from `allocate`
// (about 28 bytes a point; alive as long as the caller's allocations).
Status FindVoxelSites(const int32_t* grid, int64_t n, int dims,
                      const Allocate& allocate, int32_t* inverse,
                      VoxelSites* sites, const ParallelFor& parallel_for);

// coordinates [num_sites, dims] (the grid row of each site) and counts
// [num_sites] (its points).
void VoxelCoordinates(const int32_t* grid, int dims, const VoxelSites& sites,
                      int32_t* coordinates, int32_t* counts,
                      const ParallelFor& parallel_for);

// merged [num_sites, channels] from features [n, channels]; for kMax and
// kFirst also source [num_sites, channels] = the point each value came from
// (nullptr: not wanted).
template <typename T>
void MergeVoxelFeatures(const T* features, int64_t channels,
                        const VoxelSites& sites, VoxelMode mode, T* merged,
                        int32_t* source, const ParallelFor& parallel_for);

}  // namespace sparse_ops

#endif  // SPARSE_OPS_KERNELS_CORE_VOXELIZE_H_
