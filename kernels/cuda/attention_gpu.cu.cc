// CUDA k-selection attention; see attention_gpu.h for the contract.
//
// Entries (one per (row, channel), or one per row for the per-site
// variant) are numbered in row order. A stable radix sort by inverted
// ranking key puts them best first, equal keys in row order; a second
// stable sort by (batch item, channel) gathers each group with that order
// kept. The rank of an entry is its distance from its group's head (an
// inclusive max scan of head positions), and it is kept when the rank is
// below k: the CPU's order (key descending, row ascending), by
// construction.
#include "kernels/cuda/attention_gpu.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cub/cub.cuh>
#include <string>

#include "kernels/cuda/launch.cu.h"

namespace sparse_ops {
namespace gpu {
namespace {

template <typename T>
struct Unsigned;
template <>
struct Unsigned<float> {
  using type = uint32_t;
};
template <>
struct Unsigned<double> {
  using type = uint64_t;
};

__device__ __forceinline__ uint32_t BitsOf(float v) {
  return __float_as_uint(v);
}
__device__ __forceinline__ uint64_t BitsOf(double v) {
  return static_cast<uint64_t>(__double_as_longlong(v));
}

// The CPU core's ranking key (attention.cc, Key): value or magnitude, + 0
// turning -0 into +0, NaN as -inf, as an unsigned integer in the same order.
template <typename T>
__device__ __forceinline__ typename Unsigned<T>::type RankKey(T v,
                                                              bool magnitude) {
  using U = typename Unsigned<T>::type;
  v = (magnitude ? fabs(v) : v) + T(0);
  if (isnan(v)) v = -INFINITY;
  const U u = BitsOf(v);
  constexpr U kSign = U{1} << (8 * sizeof(U) - 1);
  return (u & kSign) ? ~u : (u | kSign);
}

template <typename T>
struct AttentionBuffers {
  using U = typename Unsigned<T>::type;
  int64_t entries;
  U *keys, *sorted_keys;  // inverted ranking keys
  int32_t *ids, *ranked_ids, *grouped_ids;
  uint64_t *groups, *sorted_groups;  // (batch item << 32) | channel
  int32_t *head_mark, *head;
  int8_t* row_kept;              // [n]
  int32_t *row_ids, *kept_rows;  // [n]
  void* temp;
  size_t temp_bytes;
  size_t bytes;
};

template <typename T>
size_t AttentionTempBytes(int64_t entries, int64_t n) {
  using U = typename Unsigned<T>::type;
  const int items = static_cast<int>(std::min(entries, kMaxSortItems));
  const int rows = static_cast<int>(std::min(n, kMaxSortItems));
  size_t by_key = 0, by_group = 0, scan = 0, select = 0;
  const cudaError_t e1 = cub::DeviceRadixSort::SortPairs(
      nullptr, by_key, static_cast<const U*>(nullptr), static_cast<U*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
      items);
  const cudaError_t e2 = cub::DeviceRadixSort::SortPairs(
      nullptr, by_group, static_cast<const uint64_t*>(nullptr),
      static_cast<uint64_t*>(nullptr), static_cast<const int32_t*>(nullptr),
      static_cast<int32_t*>(nullptr), items);
  const cudaError_t e3 = cub::DeviceScan::InclusiveScan(
      nullptr, scan, static_cast<const int32_t*>(nullptr),
      static_cast<int32_t*>(nullptr), MaxOf(), items);
  const cudaError_t e4 = cub::DeviceSelect::Flagged(
      nullptr, select, static_cast<const int32_t*>(nullptr),
      static_cast<const int8_t*>(nullptr), static_cast<int32_t*>(nullptr),
      static_cast<int64_t*>(nullptr), rows);
  if (e1 != cudaSuccess || e2 != cudaSuccess || e3 != cudaSuccess ||
      e4 != cudaSuccess) {
    return SIZE_MAX;
  }
  return std::max({by_key, by_group, scan, select});
}

template <typename T>
AttentionBuffers<T> CarveAttention(void* workspace, int64_t n, int64_t channels,
                                   AttentionPer per) {
  using U = typename Unsigned<T>::type;
  Carver c(workspace);
  AttentionBuffers<T> b;
  b.entries = per == AttentionPer::kSite ? n : CountProduct(n, channels);
  b.keys = c.Take<U>(b.entries);
  b.sorted_keys = c.Take<U>(b.entries);
  b.ids = c.Take<int32_t>(b.entries);
  b.ranked_ids = c.Take<int32_t>(b.entries);
  b.grouped_ids = c.Take<int32_t>(b.entries);
  b.groups = c.Take<uint64_t>(b.entries);
  b.sorted_groups = c.Take<uint64_t>(b.entries);
  b.head_mark = c.Take<int32_t>(b.entries);
  b.head = c.Take<int32_t>(b.entries);
  b.row_kept = c.Take<int8_t>(n);
  b.row_ids = c.Take<int32_t>(n);
  b.kept_rows = c.Take<int32_t>(n);
  b.temp_bytes = b.entries < 0 ? SIZE_MAX : AttentionTempBytes<T>(b.entries, n);
  b.temp = c.TakeBytes(b.temp_bytes);
  b.bytes = c.used();
  return b;
}

__global__ void InitAttentionInfoKernel(AttentionInfo* info) {
  info->negative_row = kNone;
  info->num_rows = 0;
  info->negative_value = 0;
  info->pad = 0;
}

__global__ void NegativeRowKernel(const int32_t* __restrict__ coords, int64_t n,
                                  int dims, AttentionInfo* info) {
  SPARSE_OPS_GRID_STRIDE(i, n) {
    if (coords[i * dims] < 0) {
      atomicMin(reinterpret_cast<ull*>(&info->negative_row),
                static_cast<ull>(i));
    }
  }
}

__global__ void NegativeValueKernel(const int32_t* __restrict__ coords,
                                    int dims, AttentionInfo* info) {
  if (info->negative_row != kNone) {
    info->negative_value =
        coords[static_cast<int64_t>(info->negative_row) * dims];
  }
}

// Entry e's inverted ranking key (best first when sorted ascending) and id.
// Per site the key is the squared L2 norm, summed over channels in order
// (the CPU core's loop; nvcc contracts it to FMAs as g++ does for
// x86-64-v3).
template <typename T>
__global__ void RankKeysKernel(const T* __restrict__ features, int64_t entries,
                               int64_t channels, bool per_site, bool magnitude,
                               typename Unsigned<T>::type* keys, int32_t* ids) {
  SPARSE_OPS_GRID_STRIDE(e, entries) {
    T value;
    if (per_site) {
      const T* f = features + e * channels;
      T norm2 = 0;
      for (int64_t c = 0; c < channels; ++c) norm2 += f[c] * f[c];
      value = norm2;
    } else {
      value = features[e];
    }
    keys[e] = ~RankKey(value, magnitude && !per_site);
    ids[e] = static_cast<int32_t>(e);
  }
}

// The group of each ranked entry: (batch item << 32) | channel.
__global__ void GroupKeysKernel(const int32_t* __restrict__ ranked_ids,
                                int64_t entries, int64_t entry_channels,
                                const int32_t* __restrict__ coords, int dims,
                                uint64_t* groups) {
  SPARSE_OPS_GRID_STRIDE(e, entries) {
    const int64_t id = ranked_ids[e];
    const int64_t row = id / entry_channels;
    const uint32_t batch = static_cast<uint32_t>(coords[row * dims]);
    groups[e] = (static_cast<uint64_t>(batch) << 32) |
                static_cast<uint64_t>(id % entry_channels);
  }
}

__global__ void HeadMarkKernel(const uint64_t* __restrict__ groups,
                               int64_t entries, int32_t* head_mark) {
  SPARSE_OPS_GRID_STRIDE(e, entries) {
    head_mark[e] =
        (e == 0 || groups[e] != groups[e - 1]) ? static_cast<int32_t>(e) : 0;
  }
}

// keep of each entry: its rank in its group below k (per site: every
// channel of the row).
__global__ void KeepKernel(const int32_t* __restrict__ grouped_ids,
                           const int32_t* __restrict__ head, int64_t entries,
                           int64_t channels, bool per_site, int64_t k,
                           bool* keep) {
  SPARSE_OPS_GRID_STRIDE(e, entries) {
    const bool kept = e - head[e] < k;
    const int64_t id = grouped_ids[e];
    if (per_site) {
      for (int64_t c = 0; c < channels; ++c) keep[id * channels + c] = kept;
    } else {
      keep[id] = kept;
    }
  }
}

__global__ void RowKeptKernel(const bool* __restrict__ keep, int64_t n,
                              int64_t channels, int8_t* row_kept,
                              int32_t* row_ids) {
  SPARSE_OPS_GRID_STRIDE(i, n) {
    int8_t any = 0;
    for (int64_t c = 0; c < channels && !any; ++c) any = keep[i * channels + c];
    row_kept[i] = any;
    row_ids[i] = static_cast<int32_t>(i);
  }
}

}  // namespace

Status AttentionInfoStatus(const AttentionInfo& info) {
  if (info.negative_row != kNone) {
    return Status::Error(
        "coordinates row " + std::to_string(info.negative_row) +
        " has a negative batch index " + std::to_string(info.negative_value));
  }
  return Status::Ok();
}

template <typename T>
size_t AttentionWorkspaceBytes(int64_t n, int64_t channels, AttentionPer per) {
  return CarveAttention<T>(nullptr, n, channels, per).bytes;
}

template <typename T>
Status AttentionKeep(const T* features, int64_t n, int64_t channels,
                     const int32_t* coords, int dims, int64_t k,
                     AttentionMode mode, AttentionPer per, bool* keep,
                     AttentionInfo* info, void* workspace,
                     size_t workspace_bytes, GpuStream stream) {
  const bool per_site = per == AttentionPer::kSite;
  const AttentionBuffers<T> b = CarveAttention<T>(workspace, n, channels, per);
  if (n < 0 || channels < 0 || k < 0 || dims < 1 || b.entries < 0 ||
      b.entries >= kMaxSortItems) {
    return Status::Error(
        "the GPU Attention ranks fewer than 2^31 - 1 entries (rows x "
        "channels), got " +
        std::to_string(n) + " x " + std::to_string(channels));
  }
  Status status = CheckWorkspace(workspace_bytes, b.bytes, "Attention");
  if (!status.ok()) return status;
  InitAttentionInfoKernel<<<1, 1, 0, stream>>>(info);
  if (n > 0) {
    NegativeRowKernel<<<GridFor(n), kThreads, 0, stream>>>(coords, n, dims,
                                                           info);
    NegativeValueKernel<<<1, 1, 0, stream>>>(coords, dims, info);
  }
  if (n == 0 || channels == 0) return LaunchStatus("Attention");
  cudaError_t e = cudaSuccess;
  if (k == 0) {
    e = cudaMemsetAsync(keep, 0, n * channels * sizeof(bool), stream);
  } else {
    const int64_t entries = b.entries;
    const int items = static_cast<int>(entries);
    const int64_t entry_channels = per_site ? 1 : channels;
    const int grid = GridFor(entries);
    RankKeysKernel<T><<<grid, kThreads, 0, stream>>>(
        features, entries, channels, per_site, mode == AttentionMode::kAbs,
        b.keys, b.ids);
    size_t temp_bytes = b.temp_bytes;
    e = cub::DeviceRadixSort::SortPairs(
        b.temp, temp_bytes, b.keys, b.sorted_keys, b.ids, b.ranked_ids, items,
        0, static_cast<int>(8 * sizeof(b.keys[0])), stream);
    if (e != cudaSuccess) return CudaStatus(e, "Attention");
    GroupKeysKernel<<<grid, kThreads, 0, stream>>>(
        b.ranked_ids, entries, entry_channels, coords, dims, b.groups);
    temp_bytes = b.temp_bytes;
    e = cub::DeviceRadixSort::SortPairs(b.temp, temp_bytes, b.groups,
                                        b.sorted_groups, b.ranked_ids,
                                        b.grouped_ids, items, 0, 64, stream);
    if (e != cudaSuccess) return CudaStatus(e, "Attention");
    HeadMarkKernel<<<grid, kThreads, 0, stream>>>(b.sorted_groups, entries,
                                                  b.head_mark);
    temp_bytes = b.temp_bytes;
    e = cub::DeviceScan::InclusiveScan(b.temp, temp_bytes, b.head_mark, b.head,
                                       MaxOf(), items, stream);
    if (e != cudaSuccess) return CudaStatus(e, "Attention");
    KeepKernel<<<grid, kThreads, 0, stream>>>(b.grouped_ids, b.head, entries,
                                              channels, per_site, k, keep);
  }
  if (e != cudaSuccess) return CudaStatus(e, "Attention");
  RowKeptKernel<<<GridFor(n), kThreads, 0, stream>>>(keep, n, channels,
                                                     b.row_kept, b.row_ids);
  size_t temp_bytes = b.temp_bytes;
  e = cub::DeviceSelect::Flagged(b.temp, temp_bytes, b.row_ids, b.row_kept,
                                 b.kept_rows, &info->num_rows,
                                 static_cast<int>(n), stream);
  return e == cudaSuccess ? LaunchStatus("Attention")
                          : CudaStatus(e, "Attention");
}

template <typename T>
Status AttentionKeptRows(int64_t n, int64_t channels, AttentionPer per,
                         int64_t num_rows, int32_t* rows, void* workspace,
                         size_t workspace_bytes, GpuStream stream) {
  const AttentionBuffers<T> b = CarveAttention<T>(workspace, n, channels, per);
  const Status status = CheckWorkspace(workspace_bytes, b.bytes, "Attention");
  if (!status.ok() || num_rows <= 0) return status;
  if (num_rows > n)
    return Status::Internal(
        "sparse_ops GPU Attention: more kept rows than rows");
  return CudaStatus(
      cudaMemcpyAsync(rows, b.kept_rows, num_rows * sizeof(int32_t),
                      cudaMemcpyDeviceToDevice, stream),
      "Attention");
}

#define SPARSE_OPS_INSTANTIATE(T)                                              \
  template size_t AttentionWorkspaceBytes<T>(int64_t, int64_t, AttentionPer);  \
  template Status AttentionKeep<T>(                                            \
      const T*, int64_t, int64_t, const int32_t*, int, int64_t, AttentionMode, \
      AttentionPer, bool*, AttentionInfo*, void*, size_t, GpuStream);          \
  template Status AttentionKeptRows<T>(int64_t, int64_t, AttentionPer,         \
                                       int64_t, int32_t*, void*, size_t,       \
                                       GpuStream);
SPARSE_OPS_INSTANTIATE(float)
SPARSE_OPS_INSTANTIATE(double)
#undef SPARSE_OPS_INSTANTIATE

}  // namespace gpu
}  // namespace sparse_ops
