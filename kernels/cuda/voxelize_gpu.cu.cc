// CUDA voxelization; see voxelize_gpu.h for the contract.
#include "kernels/cuda/voxelize_gpu.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cub/cub.cuh>
#include <string>

#include "kernels/core/coordinates.h"
#include "kernels/cuda/launch.cu.h"

namespace sparse_ops {
namespace gpu {
namespace {

struct VoxelSize {  // passed by value
  double v[kMaxDims];
};

struct VoxelBuffers {
  int32_t* grid;  // [n, dims]
  uint64_t *keys, *sorted_keys;
  int32_t *positions, *order;  // order: points sorted by (site, index)
  int32_t *head, *site_end;    // run heads by sorted index, their inclusive sum
  int64_t* starts;             // [n + 1]
  void* temp;
  size_t temp_bytes;
  size_t bytes;
};

size_t VoxelTempBytes(int64_t n) {
  const int items = static_cast<int>(std::min(n, kMaxSortItems));
  size_t sort = 0, scan = 0;
  const cudaError_t e1 = cub::DeviceRadixSort::SortPairs(
      nullptr, sort, static_cast<const uint64_t*>(nullptr),
      static_cast<uint64_t*>(nullptr), static_cast<const int32_t*>(nullptr),
      static_cast<int32_t*>(nullptr), items);
  const cudaError_t e2 = cub::DeviceScan::InclusiveSum(
      nullptr, scan, static_cast<const int32_t*>(nullptr),
      static_cast<int32_t*>(nullptr), items);
  return e1 == cudaSuccess && e2 == cudaSuccess ? std::max(sort, scan)
                                                : SIZE_MAX;
}

VoxelBuffers CarveVoxels(void* workspace, int64_t n, int dims) {
  Carver c(workspace);
  VoxelBuffers b;
  b.grid = c.Take<int32_t>(CountProduct(n, dims));
  b.keys = c.Take<uint64_t>(n);
  b.sorted_keys = c.Take<uint64_t>(n);
  b.positions = c.Take<int32_t>(n);
  b.order = c.Take<int32_t>(n);
  b.head = c.Take<int32_t>(n);
  b.site_end = c.Take<int32_t>(n);
  b.starts = c.Take<int64_t>(n + 1);
  b.temp_bytes = VoxelTempBytes(n);
  b.temp = c.TakeBytes(b.temp_bytes);
  b.bytes = c.used();
  return b;
}

__global__ void InitVoxelInfoKernel(VoxelInfo* info) {
  info->first_bad = kNone;
  info->bad = VoxelPointError{0, kVoxelPointOk, 0, 0, 0};
  info->num_sites = 0;
}

// Grid rows (the core's GridRowOf); a bad row is recorded and zeroed, so
// that the key layout stays that of the good rows.
template <typename P>
__global__ void GridKernel(const P* __restrict__ points, int64_t n, int dims,
                           const VoxelSize size, int32_t* grid,
                           int32_t* positions, VoxelInfo* info) {
  SPARSE_OPS_GRID_STRIDE(i, n) {
    int32_t* row = grid + i * dims;
    if (GridRowOf(points, i, dims, size.v, row).problem != kVoxelPointOk) {
      atomicMin(reinterpret_cast<ull*>(&info->first_bad), static_cast<ull>(i));
      for (int a = 0; a < dims; ++a) row[a] = 0;
    }
    positions[i] = static_cast<int32_t>(i);
  }
}

template <typename P>
__global__ void BadPointKernel(const P* __restrict__ points, int dims,
                               const VoxelSize size, VoxelInfo* info) {
  if (info->first_bad == kNone) return;
  int32_t row[kMaxDims];
  info->bad = GridRowOf(points, static_cast<int64_t>(info->first_bad), dims,
                        size.v, row);
}

__global__ void HeadKernel(const uint64_t* __restrict__ keys, int64_t n,
                           int32_t* head) {
  SPARSE_OPS_GRID_STRIDE(j, n) { head[j] = j == 0 || keys[j] != keys[j - 1]; }
}

// Each point's site, and where each site starts in the sorted order.
__global__ void SitesKernel(const int32_t* __restrict__ order,
                            const int32_t* __restrict__ head,
                            const int32_t* __restrict__ site_end, int64_t n,
                            int32_t* inverse, int64_t* starts) {
  SPARSE_OPS_GRID_STRIDE(j, n) {
    const int32_t site = site_end[j] - 1;
    inverse[order[j]] = site;
    if (head[j]) starts[site] = j;
  }
}

__global__ void SiteCountKernel(const int32_t* __restrict__ site_end, int64_t n,
                                int64_t* starts, VoxelInfo* info) {
  const int64_t m = n == 0 ? 0 : site_end[n - 1];
  info->num_sites = m;
  starts[m] = n;
}

__global__ void VoxelCoordinatesKernel(const int32_t* __restrict__ grid,
                                       const int32_t* __restrict__ order,
                                       const int64_t* __restrict__ starts,
                                       int64_t m, int dims,
                                       int32_t* coordinates, int32_t* counts) {
  SPARSE_OPS_GRID_STRIDE(s, m) {
    const int64_t first = order[starts[s]];
    for (int a = 0; a < dims; ++a)
      coordinates[s * dims + a] = grid[first * dims + a];
    counts[s] = static_cast<int32_t>(starts[s + 1] - starts[s]);
  }
}

// One thread per (site, channel), its points in input order: the core's
// MergeVoxelFeatures.
template <typename T>
__global__ void MergeKernel(const T* __restrict__ features,
                            const int32_t* __restrict__ order,
                            const int64_t* __restrict__ starts, int64_t m,
                            int64_t C, VoxelMode mode, T* merged,
                            int32_t* source) {
  SPARSE_OPS_GRID_STRIDE(e, m * C) {
    const int64_t s = e / C, c = e - s * C;
    const int64_t begin = starts[s], end = starts[s + 1];
    int32_t src = order[begin];
    T value = features[int64_t{src} * C + c];
    if (mode == VoxelMode::kSum || mode == VoxelMode::kAverage) {
      double sum = 0;  // in double, in input order, as sparse_quantize
      for (int64_t j = begin; j < end; ++j) {
        sum += static_cast<double>(features[int64_t{order[j]} * C + c]);
      }
      merged[e] = static_cast<T>(
          mode == VoxelMode::kAverage ? sum / (end - begin) : sum);
      continue;
    }
    if (mode ==
        VoxelMode::kMax) {  // the first point holding it; NaN, once met, stays
      for (int64_t j = begin + 1; j < end && value == value; ++j) {
        const T v = features[int64_t{order[j]} * C + c];
        if (v != v || v > value) {
          value = v;
          src = order[j];
        }
      }
    }
    merged[e] = value;
    if (source != nullptr) source[e] = src;
  }
}

}  // namespace

Status VoxelInfoStatus(const VoxelInfo& info, const double* voxel_size) {
  if (info.first_bad != kNone) return VoxelPointStatus(info.bad, voxel_size);
  if (info.keys.error == kMapKeyTooWide)
    return KeyWidthStatus(info.keys.layout);
  if (info.keys.error != kMapOk) {
    return Status::Internal("sparse_ops GPU Voxelize: unknown error " +
                            std::to_string(info.keys.error));
  }
  return Status::Ok();
}

template <typename P>
size_t VoxelizeWorkspaceBytes(int64_t n, int dims) {
  return CarveVoxels(nullptr, n, dims).bytes;
}

template <typename P>
Status VoxelizeCount(const P* points, int64_t n, int dims,
                     const double* voxel_size, int32_t* inverse,
                     VoxelInfo* info, void* workspace, size_t workspace_bytes,
                     GpuStream stream) {
  if (n < 0 || n >= kMaxSortItems || dims < 2 || dims > kMaxDims) {
    return Status::Error("sparse_ops GPU Voxelize: " + std::to_string(n) +
                         " points of " + std::to_string(dims) +
                         " columns are not supported");
  }
  const VoxelBuffers b = CarveVoxels(workspace, n, dims);
  Status status = CheckWorkspace(workspace_bytes, b.bytes, "Voxelize");
  if (!status.ok()) return status;
  VoxelSize size{};
  std::copy(voxel_size, voxel_size + dims - 1, size.v);
  InitVoxelInfoKernel<<<1, 1, 0, stream>>>(info);
  if (n > 0) {
    GridKernel<P><<<GridFor(n), kThreads, 0, stream>>>(
        points, n, dims, size, b.grid, b.positions, info);
    BadPointKernel<P><<<1, 1, 0, stream>>>(points, dims, size, info);
  }
  status = KeyLayoutOf(b.grid, n, dims, &info->keys, stream);
  if (!status.ok()) return status;
  if (n > 0) {
    status = PackKeys(b.grid, n, dims, &info->keys, b.keys, stream);
    if (!status.ok()) return status;
    const int items = static_cast<int>(n);
    size_t temp_bytes = b.temp_bytes;
    cudaError_t e = cub::DeviceRadixSort::SortPairs(
        b.temp, temp_bytes, b.keys, b.sorted_keys, b.positions, b.order, items,
        0, 64, stream);
    if (e != cudaSuccess) return CudaStatus(e, "Voxelize");
    HeadKernel<<<GridFor(n), kThreads, 0, stream>>>(b.sorted_keys, n, b.head);
    temp_bytes = b.temp_bytes;
    e = cub::DeviceScan::InclusiveSum(b.temp, temp_bytes, b.head, b.site_end,
                                      items, stream);
    if (e != cudaSuccess) return CudaStatus(e, "Voxelize");
    SitesKernel<<<GridFor(n), kThreads, 0, stream>>>(
        b.order, b.head, b.site_end, n, inverse, b.starts);
  }
  SiteCountKernel<<<1, 1, 0, stream>>>(b.site_end, n, b.starts, info);
  return LaunchStatus("Voxelize");
}

template <typename T>
Status VoxelizeFill(const T* features, int64_t n, int dims, int64_t channels,
                    int64_t num_sites, VoxelMode mode, int32_t* coordinates,
                    int32_t* counts, T* merged, int32_t* source,
                    void* workspace, size_t workspace_bytes, GpuStream stream) {
  const VoxelBuffers b =
      CarveVoxels(workspace, n, dims);  // where Count left its work
  const Status status = CheckWorkspace(workspace_bytes, b.bytes, "Voxelize");
  if (!status.ok() || num_sites == 0) return status;
  if (num_sites > n)
    return Status::Internal("sparse_ops GPU Voxelize: more sites than points");
  VoxelCoordinatesKernel<<<GridFor(num_sites), kThreads, 0, stream>>>(
      b.grid, b.order, b.starts, num_sites, dims, coordinates, counts);
  const int64_t entries = CountProduct(num_sites, channels);
  if (entries > 0) {
    MergeKernel<T><<<GridFor(entries), kThreads, 0, stream>>>(
        features, b.order, b.starts, num_sites, channels, mode, merged, source);
  }
  return LaunchStatus("Voxelize");
}

template size_t VoxelizeWorkspaceBytes<float>(int64_t, int);
template size_t VoxelizeWorkspaceBytes<double>(int64_t, int);
template Status VoxelizeCount<float>(const float*, int64_t, int, const double*,
                                     int32_t*, VoxelInfo*, void*, size_t,
                                     GpuStream);
template Status VoxelizeCount<double>(const double*, int64_t, int,
                                      const double*, int32_t*, VoxelInfo*,
                                      void*, size_t, GpuStream);
template Status VoxelizeFill<float>(const float*, int64_t, int, int64_t,
                                    int64_t, VoxelMode, int32_t*, int32_t*,
                                    float*, int32_t*, void*, size_t, GpuStream);
template Status VoxelizeFill<double>(const double*, int64_t, int, int64_t,
                                     int64_t, VoxelMode, int32_t*, int32_t*,
                                     double*, int32_t*, void*, size_t,
                                     GpuStream);

}  // namespace gpu
}  // namespace sparse_ops
