// CUDA kernel maps of the framework-free core; see core_gpu.h for the
// contracts. Keys and hashing, the kernel map, map checks and the
// transposed map.
//
// Kernel map: per-axis bounds (atomic min/max) -> key layout (one thread,
// KeyPacker::Finalize's rules) -> open-addressing hash table (atomicCAS on
// 64-bit keys; each slot keeps the smallest row, so duplicates are reported
// deterministically) -> neighbour table nbr[k * n_out + o] (one thread per
// (o, k); symmetric submanifold maps probe half the offsets and mirror) ->
// stream compaction of the neighbour table in (k, o) order: per-block
// counts, one exclusive scan, then a ballot-based fill. Pairs come out
// sorted by output row within each offset, exactly as on the CPU.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cub/cub.cuh>
#include <string>

#include "kernels/cuda/core_gpu.h"
#include "kernels/cuda/launch.cu.h"

namespace sparse_ops {
namespace gpu {
namespace {

constexpr int kInt32Max = 2147483647;
constexpr int kInt32Min = -2147483647 - 1;
// Compaction: each block takes kItems entries per thread.
constexpr int kItems = 16;
constexpr int64_t kTile = int64_t{kThreads} * kItems;
constexpr int kWarps = kThreads / 32;

// Slots for n rows: a power of two, load factor <= 1/2 (as the CPU table).
int64_t TableCapacity(int64_t n) {
  int64_t capacity = 16;
  while (capacity < 2 * n) capacity <<= 1;
  return capacity;
}

// --- Key layout (kernels/core/key_layout.h)
// ------------------------------------

// The layout's packing fields, in shared memory for PackKey.
struct SharedLayout {
  int64_t lo[kMaxDims];
  int64_t span[kMaxDims];
  int32_t shift[kMaxDims];
};

__device__ void LoadLayout(const KeyLayout& layout, int dims, SharedLayout* s) {
  for (int a = threadIdx.x; a < dims; a += blockDim.x) {
    s->lo[a] = layout.lo[a];
    s->span[a] = layout.span[a];
    s->shift[a] = layout.shift[a];
  }
}

template <int D>
__device__ __forceinline__ void LoadRow(const int32_t* coords, int64_t row,
                                        int dims, int64_t* q) {
#pragma unroll
  for (int a = 0; a < (D > 0 ? D : kMaxDims); ++a) {
    if (D == 0 && a >= dims) break;
    q[a] = coords[row * dims + a];
  }
}

__device__ __forceinline__ int32_t Find(const uint64_t* __restrict__ keys,
                                        const int32_t* __restrict__ rows,
                                        uint64_t mask, uint64_t key) {
  uint64_t slot = HashKey(key) & mask;
  while (true) {
    const uint64_t k = keys[slot];
    if (k == key) return rows[slot];
    if (k == kEmptyKey) return -1;
    slot = (slot + 1) & mask;
  }
}

__global__ void InitInfoKernel(KernelMapInfo* info) {
  const int a = threadIdx.x;
  if (a == 0) {
    info->num_pairs = 0;
    info->error = kMapOk;
    info->mirrored = 0;
    info->duplicate_flag = 0;
    info->error_axis = 0;
    info->duplicate = kNone;
    info->negative_in_row = kNone;
    info->negative_out_row = kNone;
    info->negative_in_value = 0;
    info->negative_out_value = 0;
    info->layout.dims = 0;
    info->layout.total_bits = 0;
  }
  if (a < kMaxDims) {
    info->lo[a] = kInt32Max;
    info->hi[a] = kInt32Min;
    info->duplicate_site[a] = 0;
    info->layout.lo[a] = 0;
    info->layout.span[a] = 0;
    info->layout.shift[a] = 0;
    info->layout.bits[a] = 0;
  }
}

// Per-axis min / max of coords [n, dims], and the first negative batch.
__global__ void BoundsKernel(const int32_t* __restrict__ coords, int64_t n,
                             int dims, KernelMapInfo* info) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t start =
      static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int a = 0; a < dims; ++a) {
    int lo = kInt32Max, hi = kInt32Min;
    for (int64_t i = start; i < n; i += step) {
      const int v = coords[i * dims + a];
      lo = min(lo, v);
      hi = max(hi, v);
      if (a == 0 && v < 0) {
        atomicMin(reinterpret_cast<ull*>(&info->negative_in_row),
                  static_cast<ull>(i));
      }
    }
    for (int d = 16; d > 0; d >>= 1) {
      lo = min(lo, __shfl_xor_sync(0xffffffffu, lo, d));
      hi = max(hi, __shfl_xor_sync(0xffffffffu, hi, d));
    }
    if ((threadIdx.x & 31) == 0 && lo <= hi) {
      atomicMin(&info->lo[a], lo);
      atomicMax(&info->hi[a], hi);
    }
  }
}

__global__ void NegativeBatchKernel(const int32_t* __restrict__ coords,
                                    int64_t n, int dims, uint64_t* first) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < n; i += step) {
    if (coords[i * dims] < 0) {
      atomicMin(reinterpret_cast<ull*>(first), static_cast<ull>(i));
    }
  }
}

// KeyPacker::Finalize on the device: the shared layout of the ranges
// [lo[a], hi[a]]; keys wider than 63 bits are an error unless one was found
// before.
__device__ void SetLayout(KernelMapInfo* info, int dims, const int64_t* lo,
                          const int64_t* hi) {
  SetKeyLayout(dims, lo, hi, &info->layout);
  if (info->layout.total_bits > kMaxKeyBits && info->error == kMapOk) {
    info->error = kMapKeyTooWide;
  }
}

// KeyPacker::Finalize on the device (one thread), plus the mirror decision
// (IsSymmetric) for maps between identical coordinate sets.
__global__ void LayoutKernel(KernelMapInfo* info, int dims,
                             const int32_t* __restrict__ offsets, int64_t K,
                             bool same_coordinates) {
  int64_t lo[kMaxDims], hi[kMaxDims];
  for (int a = 0; a < dims; ++a) {
    lo[a] = info->lo[a];
    hi[a] = info->hi[a];
  }
  SetLayout(info, dims, lo, hi);
  info->mirrored = same_coordinates && IsSymmetricOffsets(offsets, K, dims - 1);
}

__global__ void TableInitKernel(uint64_t* keys, int32_t* rows,
                                int64_t capacity) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       s < capacity; s += step) {
    keys[s] = kEmptyKey;
    rows[s] = kInt32Max;
  }
}

template <int D>
__global__ void InsertKernel(const int32_t* __restrict__ coords, int64_t n,
                             int dims, KernelMapInfo* info, uint64_t* keys,
                             int32_t* rows, uint64_t mask) {
  __shared__ SharedLayout layout;
  if (info->error != kMapOk) return;  // the same for every thread
  LoadLayout(info->layout, dims, &layout);
  __syncthreads();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  int64_t q[D > 0 ? D : kMaxDims];
  LoadRow<D>(coords, i, dims, q);
  uint64_t key;
  if (!PackKey<D>(layout, dims, q, &key)) return;  // cannot happen: own range
  uint64_t slot = HashKey(key) & mask;
  while (true) {
    const ull prev =
        atomicCAS(reinterpret_cast<ull*>(&keys[slot]),
                  static_cast<ull>(kEmptyKey), static_cast<ull>(key));
    if (prev == kEmptyKey || prev == key) {
      // Each slot keeps the smallest row of its site.
      atomicMin(&rows[slot], static_cast<int32_t>(i));
      if (prev == key) info->duplicate_flag = 1;
      return;
    }
    slot = (slot + 1) & mask;
  }
}

// Runs only when the build saw a duplicate: the smallest row that repeats
// an earlier site, with the earliest row of that site.
template <int D>
__global__ void DuplicateKernel(const int32_t* __restrict__ coords, int64_t n,
                                int dims, KernelMapInfo* info,
                                const uint64_t* __restrict__ keys,
                                const int32_t* __restrict__ rows,
                                uint64_t mask) {
  __shared__ SharedLayout layout;
  if (info->duplicate_flag == 0 || info->error != kMapOk) return;
  LoadLayout(info->layout, dims, &layout);
  __syncthreads();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  int64_t q[D > 0 ? D : kMaxDims];
  LoadRow<D>(coords, i, dims, q);
  uint64_t key;
  if (!PackKey<D>(layout, dims, q, &key)) return;
  const int32_t first = Find(keys, rows, mask, key);
  if (first != static_cast<int32_t>(i)) {
    atomicMin(reinterpret_cast<ull*>(&info->duplicate),
              (static_cast<ull>(i) << 32) | static_cast<uint32_t>(first));
  }
}

// nbr[k * n_out + o] = input row at out_coords[o] + offsets[k] * stride, or
// -1. Mirrored: offsets k < K/2 are probed and K-1-k filled from them (nbr
// was set to -1 beforehand); the centre (K odd) is the identity.
template <int D>
__global__ void ProbeKernel(const int32_t* __restrict__ out_coords,
                            int64_t n_out, int dims,
                            const int32_t* __restrict__ offsets, int64_t K,
                            const Stride stride, const KernelMapInfo* info,
                            const uint64_t* __restrict__ keys,
                            const int32_t* __restrict__ rows, uint64_t mask,
                            int32_t* nbr) {
  __shared__ SharedLayout layout;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (info->error != kMapOk) {  // no usable layout: an empty map
    for (int64_t k = blockIdx.y; k < K && o < n_out; k += gridDim.y) {
      nbr[k * n_out + o] = -1;
    }
    return;
  }
  LoadLayout(info->layout, dims, &layout);
  __syncthreads();
  const bool mirror = info->mirrored != 0;
  if (o >= n_out) return;
  int64_t c[D > 0 ? D : kMaxDims];
  LoadRow<D>(out_coords, o, dims, c);
  for (int64_t k = blockIdx.y; k < K; k += gridDim.y) {
    if (mirror) {
      if ((K & 1) && k == K / 2) {
        nbr[k * n_out + o] = static_cast<int32_t>(o);
        continue;
      }
      if (k >= K / 2) continue;
    }
    int64_t q[D > 0 ? D : kMaxDims];
    q[0] = c[0];
#pragma unroll
    for (int a = 1; a < (D > 0 ? D : kMaxDims); ++a) {
      if (D == 0 && a >= dims) break;
      q[a] = c[a] + static_cast<int64_t>(offsets[k * (dims - 1) + a - 1]) *
                        stride.v[a - 1];
    }
    uint64_t key;
    const int32_t i =
        PackKey<D>(layout, dims, q, &key) ? Find(keys, rows, mask, key) : -1;
    nbr[k * n_out + o] = i;
    // Unique coordinates: row i is reached from one o per offset.
    if (mirror && i >= 0) {
      nbr[(K - 1 - k) * n_out + i] = static_cast<int32_t>(o);
    }
  }
}

template <int D>
__global__ void PackKeysKernel(const int32_t* __restrict__ coords, int64_t n,
                               int dims, const KernelMapInfo* info,
                               uint64_t* keys) {
  __shared__ SharedLayout layout;
  const bool bad = info->error == kMapKeyTooWide;
  LoadLayout(info->layout, dims, &layout);
  __syncthreads();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  int64_t q[D > 0 ? D : kMaxDims];
  LoadRow<D>(coords, i, dims, q);
  uint64_t key;
  keys[i] = (!bad && PackKey<D>(layout, dims, q, &key)) ? key : kEmptyKey;
}

// One thread: resolves the data errors into info.
__global__ void FinishInfoKernel(KernelMapInfo* info,
                                 const int32_t* __restrict__ in_coords,
                                 const int32_t* __restrict__ out_coords,
                                 int dims) {
  if (info->error == kMapOk && info->duplicate != kNone) {
    info->error = kMapDuplicate;
    const int64_t row = static_cast<int64_t>(info->duplicate & 0xffffffffull);
    for (int a = 0; a < dims; ++a) {
      info->duplicate_site[a] = in_coords[row * dims + a];
    }
  }
  if (info->negative_in_row != kNone) {
    info->negative_in_value =
        in_coords[static_cast<int64_t>(info->negative_in_row) * dims];
  }
  if (info->negative_out_row != kNone) {
    info->negative_out_value =
        out_coords[static_cast<int64_t>(info->negative_out_row) * dims];
  }
}

// --- Coordinate lookup
// ---------------------------------------------------------------

template <int D>
__global__ void LookupKernel(const int32_t* __restrict__ queries,
                             int64_t num_queries, int dims,
                             const KernelMapInfo* info,
                             const uint64_t* __restrict__ keys,
                             const int32_t* __restrict__ table_rows,
                             uint64_t mask, int32_t* __restrict__ rows) {
  __shared__ SharedLayout layout;
  const bool ok = info->error == kMapOk;
  if (ok) LoadLayout(info->layout, dims, &layout);
  __syncthreads();
  const int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= num_queries) return;
  int32_t row = -1;
  if (ok) {
    int64_t c[D > 0 ? D : kMaxDims];
    LoadRow<D>(queries, q, dims, c);
    uint64_t key;
    if (PackKey<D>(layout, dims, c, &key))
      row = Find(keys, table_rows, mask, key);
  }
  rows[q] = row;
}

// --- Strided coordinates
// -----------------------------------------------------------

__host__ __device__ inline int64_t FloorDiv(int64_t a, int64_t b) {  // b > 0
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

// KeyPacker::Finalize over the strided range (one thread): floor(c / s) * s
// is monotone in c, so its range follows from the bounds. Records the
// first axis whose strided range falls below int32, as the CPU does.
__global__ void StridedLayoutKernel(KernelMapInfo* info, int dims,
                                    const Stride stride) {
  int64_t lo[kMaxDims], hi[kMaxDims];
  for (int a = 0; a < dims; ++a) {
    lo[a] = info->lo[a];
    hi[a] = info->hi[a];
    if (lo[a] > hi[a]) {  // no rows: empty range
      lo[a] = hi[a] = 0;
      continue;
    }
    if (a == 0) continue;
    const int64_t s = stride.v[a - 1];
    lo[a] = FloorDiv(lo[a], s) * s;
    hi[a] = FloorDiv(hi[a], s) * s;
    if (lo[a] < kInt32Min && info->error == kMapOk) {
      info->error = kMapStridedUnderflow;
      info->error_axis = a;
    }
  }
  SetLayout(info, dims, lo, hi);
}

template <int D>
__global__ void StridedPackKernel(const int32_t* __restrict__ coords, int64_t n,
                                  int dims, const Stride stride,
                                  const KernelMapInfo* info,
                                  uint64_t* __restrict__ keys) {
  __shared__ SharedLayout layout;
  const bool ok = info->error == kMapOk;
  if (ok) LoadLayout(info->layout, dims, &layout);
  __syncthreads();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  int64_t q[D > 0 ? D : kMaxDims];
  LoadRow<D>(coords, i, dims, q);
#pragma unroll
  for (int a = 1; a < (D > 0 ? D : kMaxDims); ++a) {
    if (D == 0 && a >= dims) break;
    const int64_t s = stride.v[a - 1];
    q[a] = FloorDiv(q[a], s) * s;
  }
  uint64_t key = 0;
  if (ok) PackKey<D>(layout, dims, q, &key);  // in range by construction
  keys[i] = key;
}

__global__ void UnpackKernel(const uint64_t* __restrict__ keys, int64_t n,
                             int dims, const KernelMapInfo* info,
                             int32_t* __restrict__ out) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < n; i += step) {
    UnpackKey(info->layout, keys[i], out + i * dims);
  }
}

// --- Generative coordinates
// -------------------------------------------------------

// Per-axis min / max of the steps offsets[k] * stride (axis 0: none).
struct StepBounds {
  long long lo[kMaxDims];
  long long hi[kMaxDims];
};

__global__ void StepBoundsInitKernel(StepBounds* b) {
  const int a = threadIdx.x;
  if (a < kMaxDims) {
    b->lo[a] = a == 0 ? 0 : LLONG_MAX;
    b->hi[a] = a == 0 ? 0 : LLONG_MIN;
  }
}

__global__ void StepBoundsKernel(const int32_t* __restrict__ offsets, int64_t K,
                                 int dims, const Stride stride, StepBounds* b) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       k < K; k += step) {
    for (int a = 1; a < dims; ++a) {
      const long long v =
          static_cast<long long>(offsets[k * (dims - 1) + a - 1]) *
          stride.v[a - 1];
      atomicMin(&b->lo[a], v);
      atomicMax(&b->hi[a], v);
    }
  }
}

// CoverShifted and KeyPacker::Finalize (one thread): the rows' range and
// it shifted by every step; the first axis leaving int32 is an error.
__global__ void GenerativeLayoutKernel(KernelMapInfo* info, int dims, int64_t K,
                                       const StepBounds* b) {
  int64_t lo[kMaxDims], hi[kMaxDims];
  for (int a = 0; a < dims; ++a) {
    lo[a] = info->lo[a];
    hi[a] = info->hi[a];
    if (lo[a] > hi[a]) {  // no rows: empty range, nothing shifted
      lo[a] = hi[a] = 0;
      continue;
    }
    if (K == 0) continue;
    const int64_t new_lo = lo[a] + b->lo[a], new_hi = hi[a] + b->hi[a];
    if ((new_lo < kInt32Min || new_hi > kInt32Max) && info->error == kMapOk) {
      info->error = kMapGenerativeOverflow;
      info->error_axis = a;
    }
    lo[a] = min(lo[a], new_lo);
    hi[a] = max(hi[a], new_hi);
  }
  SetLayout(info, dims, lo, hi);
}

// keys[i * K + k] = the key of row i shifted by offset k.
template <int D>
__global__ void GenerativePackKernel(const int32_t* __restrict__ coords,
                                     int64_t n, int dims,
                                     const int32_t* __restrict__ offsets,
                                     int64_t K, const Stride stride,
                                     const KernelMapInfo* info,
                                     uint64_t* __restrict__ keys) {
  __shared__ SharedLayout layout;
  const bool ok = info->error == kMapOk;
  if (ok) LoadLayout(info->layout, dims, &layout);
  __syncthreads();
  const int64_t total = n * K;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       t < total; t += step) {
    const int64_t i = t / K, k = t % K;
    int64_t q[D > 0 ? D : kMaxDims];
    LoadRow<D>(coords, i, dims, q);
#pragma unroll
    for (int a = 1; a < (D > 0 ? D : kMaxDims); ++a) {
      if (D == 0 && a >= dims) break;
      q[a] += static_cast<int64_t>(offsets[k * (dims - 1) + a - 1]) *
              stride.v[a - 1];
    }
    uint64_t key = 0;
    if (ok) PackKey<D>(layout, dims, q, &key);  // in range by construction
    keys[t] = key;
  }
}

struct StridedBuffers {
  uint64_t *keys, *sorted, *unique;
  void* temp;
  size_t temp_bytes;
  size_t bytes;
};

// CUB's temporary storage for sorting and selecting n keys (SIZE_MAX when
// CUB refuses the size; its item counts are ints).
size_t SortUniqueBytes(int64_t n) {
  const int items = static_cast<int>(std::min<int64_t>(n, kInt32Max));
  size_t sort = 0, unique = 0;
  const cudaError_t e1 = cub::DeviceRadixSort::SortKeys(
      nullptr, sort, static_cast<const uint64_t*>(nullptr),
      static_cast<uint64_t*>(nullptr), items);
  const cudaError_t e2 = cub::DeviceSelect::Unique(
      nullptr, unique, static_cast<const uint64_t*>(nullptr),
      static_cast<uint64_t*>(nullptr), static_cast<int64_t*>(nullptr), items);
  return e1 == cudaSuccess && e2 == cudaSuccess ? std::max(sort, unique)
                                                : SIZE_MAX;
}

StridedBuffers CarveStrided(void* workspace, int64_t n) {
  Carver c(workspace);
  StridedBuffers b;
  b.keys = c.Take<uint64_t>(n);
  b.sorted = c.Take<uint64_t>(n);
  b.unique = c.Take<uint64_t>(n);
  b.temp_bytes = SortUniqueBytes(n);
  b.temp = c.TakeBytes(b.temp_bytes);
  b.bytes = c.used();
  return b;
}

// Sorts the n keys of b and makes them unique (into b.unique); the count
// goes to *count on the device.
Status SortUniqueKeys(const StridedBuffers& b, int64_t n, int64_t* count,
                      GpuStream stream, const char* what) {
  size_t temp_bytes = b.temp_bytes;
  cudaError_t e = cub::DeviceRadixSort::SortKeys(
      b.temp, temp_bytes, b.keys, b.sorted, static_cast<int>(n), 0, 64, stream);
  temp_bytes = b.temp_bytes;
  if (e == cudaSuccess) {
    e = cub::DeviceSelect::Unique(b.temp, temp_bytes, b.sorted, b.unique, count,
                                  static_cast<int>(n), stream);
  }
  return e == cudaSuccess ? LaunchStatus(what) : CudaStatus(e, what);
}

// The errors of a site-making op (info from StridedLayoutKernel or
// GenerativeLayoutKernel), in the CPU op's order.
Status SitesInfoStatus(const KernelMapInfo& info, const char* what) {
  if (info.negative_in_row != kNone) {
    return Status::Error("coordinates row " +
                         std::to_string(info.negative_in_row) +
                         " has a negative batch index " +
                         std::to_string(info.negative_in_value));
  }
  const std::string axis = std::to_string(info.error_axis);
  if (info.error == kMapStridedUnderflow) {
    return Status::Error("strided coordinates of axis " + axis +
                         " fall below the int32 range");
  }
  if (info.error == kMapGenerativeOverflow) {
    return Status::Error("generated coordinates of axis " + axis +
                         " would overflow the int32 range");
  }
  if (info.error == kMapKeyTooWide) return KeyWidthStatus(info.layout);
  if (info.error != kMapOk) {
    return Status::Internal(std::string("sparse_ops GPU ") + what +
                            ": unknown error " + std::to_string(info.error));
  }
  return Status::Ok();
}

// Writes the first num_sites unique keys of b (of at most `candidates`)
// as coordinates.
Status UnpackSites(const StridedBuffers& b, int64_t candidates,
                   const KernelMapInfo* info, int dims, int64_t num_sites,
                   int32_t* out, GpuStream stream, const char* what) {
  if (num_sites <= 0) return Status::Ok();
  if (num_sites > candidates) {
    return Status::Internal(std::string("sparse_ops GPU ") + what +
                            ": more sites than keys");
  }
  UnpackKernel<<<GridFor(num_sites), kThreads, 0, stream>>>(b.unique, num_sites,
                                                            dims, info, out);
  return LaunchStatus(what);
}

// --- Stream compaction of a neighbour table
// ------------------------------------------ table [E] (E = K * n_cols) in (k,
// col) order -> pairs (table[e], e % n_cols) for table[e] >= 0, in the same
// order.

__global__ void CountKernel(const int32_t* __restrict__ table, int64_t E,
                            int32_t* counts) {
  __shared__ int warp_count[kWarps];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kTile;
  int count = 0;
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int64_t e = base + j * kThreads + threadIdx.x;
    const bool valid = e < E && table[e] >= 0;
    count += __popc(__ballot_sync(0xffffffffu, valid));
  }
  if ((threadIdx.x & 31) == 0) warp_count[threadIdx.x / 32] = count;
  __syncthreads();
  if (threadIdx.x == 0) {
    int total = 0;
    for (int w = 0; w < kWarps; ++w) total += warp_count[w];
    counts[blockIdx.x] = total;
  }
}

// One block of 1024 threads: offsets = exclusive scan of counts, *total =
// the sum (also into info->num_pairs when info is given).
__global__ void __launch_bounds__(1024)
    ScanKernel(const int32_t* __restrict__ counts, int64_t nb, int64_t* offsets,
               int64_t* total, KernelMapInfo* info) {
  __shared__ int64_t warp_sum[32];
  __shared__ int64_t chunk_total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  int64_t carry = 0;
  for (int64_t base = 0; base < nb; base += 1024) {
    const int64_t idx = base + threadIdx.x;
    const int64_t v = idx < nb ? counts[idx] : 0;
    int64_t incl = v;
    for (int d = 1; d < 32; d <<= 1) {
      const int64_t up = __shfl_up_sync(0xffffffffu, incl, d);
      if (lane >= d) incl += up;
    }
    if (lane == 31) warp_sum[warp] = incl;
    __syncthreads();
    if (warp == 0) {
      int64_t s = warp_sum[lane];
      int64_t si = s;
      for (int d = 1; d < 32; d <<= 1) {
        const int64_t up = __shfl_up_sync(0xffffffffu, si, d);
        if (lane >= d) si += up;
      }
      warp_sum[lane] = si - s;  // exclusive prefix of the warps
      if (lane == 31) chunk_total = si;
    }
    __syncthreads();
    if (idx < nb) offsets[idx] = carry + warp_sum[warp] + incl - v;
    carry += chunk_total;
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    *total = carry;
    // Always what KernelMapFill will write, error or not.
    if (info != nullptr) info->num_pairs = carry;
  }
}

// Writes the pairs, and splits[k] = the position of entry k * n_cols (the
// pairs of offsets before k) when splits is given.
__global__ void FillKernel(const int32_t* __restrict__ table, int64_t E,
                           int64_t n_cols, const int64_t* __restrict__ offsets,
                           const int64_t* __restrict__ total, int64_t K,
                           int64_t* splits, int32_t* rows_a, int32_t* rows_b) {
  __shared__ int warp_base[kItems * kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kTile;
  int32_t v[kItems];
  unsigned bal[kItems];
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int64_t e = base + j * kThreads + threadIdx.x;
    v[j] = e < E ? table[e] : -1;
    bal[j] = __ballot_sync(0xffffffffu, v[j] >= 0);
  }
  if (lane == 0) {
#pragma unroll
    for (int j = 0; j < kItems; ++j)
      warp_base[j * kWarps + warp] = __popc(bal[j]);
  }
  __syncthreads();
  if (warp == 0) {
    // kItems * kWarps = 128 counts in (j, warp) order, 4 per lane.
    constexpr int kPer = kItems * kWarps / 32;
    int local[kPer];
    int sum = 0;
#pragma unroll
    for (int r = 0; r < kPer; ++r) {
      local[r] = warp_base[lane * kPer + r];
      sum += local[r];
    }
    int incl = sum;
    for (int d = 1; d < 32; d <<= 1) {
      const int up = __shfl_up_sync(0xffffffffu, incl, d);
      if (lane >= d) incl += up;
    }
    int run = incl - sum;
#pragma unroll
    for (int r = 0; r < kPer; ++r) {
      warp_base[lane * kPer + r] = run;
      run += local[r];
    }
  }
  __syncthreads();
  const int64_t block_offset = offsets[blockIdx.x];
  const unsigned lower = (1u << lane) - 1u;
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int64_t e = base + j * kThreads + threadIdx.x;
    if (e >= E) continue;
    const int64_t pos =
        block_offset + warp_base[j * kWarps + warp] + __popc(bal[j] & lower);
    const int64_t k = e / n_cols;
    const int64_t col = e - k * n_cols;
    if (v[j] >= 0) {
      rows_a[pos] = v[j];
      rows_b[pos] = static_cast<int32_t>(col);
    }
    if (splits != nullptr && col == 0) splits[k] = pos;
  }
  if (splits != nullptr && blockIdx.x == 0 && threadIdx.x == 0) {
    splits[K] = *total;
  }
}

struct Compaction {
  int32_t* counts;
  int64_t* offsets;
  int64_t* total;
  int64_t blocks;
};

Compaction CarveCompaction(Carver* c, int64_t E) {
  Compaction r;
  r.blocks = CeilDiv(E, kTile);
  r.counts = c->Take<int32_t>(r.blocks);
  r.offsets = c->Take<int64_t>(r.blocks);
  r.total = c->Take<int64_t>(1);
  return r;
}

void LaunchCountScan(const int32_t* table, int64_t E, const Compaction& c,
                     KernelMapInfo* info, cudaStream_t stream) {
  if (c.blocks > 0) {
    CountKernel<<<c.blocks, kThreads, 0, stream>>>(table, E, c.counts);
  }
  ScanKernel<<<1, 1024, 0, stream>>>(c.counts, c.blocks, c.offsets, c.total,
                                     info);
}

void LaunchFill(const int32_t* table, int64_t E, int64_t n_cols,
                const Compaction& c, int64_t K, int64_t* splits,
                int32_t* rows_a, int32_t* rows_b, cudaStream_t stream) {
  if (E == 0) {
    if (splits != nullptr) {
      cudaMemsetAsync(splits, 0, (K + 1) * sizeof(int64_t), stream);
    }
    return;
  }
  FillKernel<<<c.blocks, kThreads, 0, stream>>>(
      table, E, n_cols, c.offsets, c.total, K, splits, rows_a, rows_b);
}

// --- Kernel map workspace
// ----------------------------------------------------------

struct MapBuffers {
  uint64_t* keys;
  int32_t* rows;
  int32_t* nbr;
  Compaction compaction;
  int64_t capacity;
  int64_t entries;
  size_t bytes;
};

MapBuffers CarveMap(void* workspace, int64_t n_in, int64_t n_out, int64_t K) {
  Carver c(workspace);
  MapBuffers b;
  b.capacity = TableCapacity(n_in);
  b.entries = CountProduct(K, n_out);
  b.keys = c.Take<uint64_t>(b.capacity);
  b.rows = c.Take<int32_t>(b.capacity);
  b.nbr = c.Take<int32_t>(b.entries);
  b.compaction = CarveCompaction(&c, b.entries);
  b.bytes = c.used();
  return b;
}

Status CheckSizes(int64_t n_in, int64_t n_out, int64_t K) {
  const int64_t kMaxRows = (int64_t{1} << 31) - 1;
  if (n_in < 0 || n_out < 0 || n_in >= kMaxRows || n_out >= kMaxRows || K < 0) {
    return Status::Error(
        "sparse_ops GPU kernel map: row counts must be in "
        "[0, 2^31 - 1) and the offset count >= 0, got " +
        std::to_string(n_in) + ", " + std::to_string(n_out) + ", " +
        std::to_string(K));
  }
  return Status::Ok();
}

// Dispatches a kernel templated on the coordinate width.
#define SPARSE_OPS_DISPATCH_DIMS(dims, KERNEL, grid, block, stream, ...) \
  do {                                                                   \
    switch (dims) {                                                      \
      case 2: KERNEL<2><<<grid, block, 0, stream>>>(__VA_ARGS__); break; \
      case 3: KERNEL<3><<<grid, block, 0, stream>>>(__VA_ARGS__); break; \
      case 4: KERNEL<4><<<grid, block, 0, stream>>>(__VA_ARGS__); break; \
      case 5: KERNEL<5><<<grid, block, 0, stream>>>(__VA_ARGS__); break; \
      default: KERNEL<0><<<grid, block, 0, stream>>>(__VA_ARGS__);       \
    }                                                                    \
  } while (0)

// --- Kernel map checks and transposition
// ----------------------------------------------

__global__ void CheckSplitsKernel(const int64_t* __restrict__ splits, int64_t K,
                                  int64_t P, KernelMapCheck* check) {
  check->bad_pair = kNone;
  check->repeated_pair = kNone;
  check->in_row = check->out_row = check->repeated_row = 0;
  int bad = (splits[0] != 0 || splits[K] != P) ? 1 : 0;
  for (int64_t k = 0; k < K && !bad; ++k) {
    if (splits[k + 1] < splits[k]) bad = 2;
  }
  check->bad_splits = bad;
}

__global__ void CheckPairsKernel(const int64_t* __restrict__ splits,
                                 const int32_t* __restrict__ in_rows,
                                 const int32_t* __restrict__ out_rows,
                                 int64_t K, int64_t P, int64_t n_in,
                                 int64_t n_out, KernelMapCheck* check) {
  if (check->bad_splits != 0) return;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       p < P; p += step) {
    const int64_t i = in_rows[p], o = out_rows[p];
    bool bad = i < 0 || i >= n_in || o < 0 || o >= n_out;
    if (!bad && p > 0) {
      const int64_t k = OffsetOf(splits, K, p);
      if (p > splits[k] && out_rows[p - 1] >= o) bad = true;
    }
    if (bad) {
      atomicMin(reinterpret_cast<ull*>(&check->bad_pair), static_cast<ull>(p));
    }
  }
}

__global__ void CheckFinishKernel(const int32_t* __restrict__ in_rows,
                                  const int32_t* __restrict__ out_rows,
                                  KernelMapCheck* check) {
  if (check->bad_pair != kNone) {
    check->in_row = in_rows[check->bad_pair];
    check->out_row = out_rows[check->bad_pair];
  }
}

__global__ void TransposeScatterKernel(const int64_t* __restrict__ splits,
                                       const int32_t* __restrict__ in_rows,
                                       const int32_t* __restrict__ out_rows,
                                       int64_t K, int64_t P, int64_t n_in,
                                       int32_t* table) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       p < P; p += step) {
    const int64_t k = OffsetOf(splits, K, p);
    const int32_t i = in_rows[p];
    if (i >= 0 && i < n_in) table[k * n_in + i] = out_rows[p];
  }
}

// Repeated input rows within an offset (refused by the CPU's transposition):
// each (offset, input row) slot keeps its first pair; a later pair of the
// same slot is a repeat, and the smallest such pair is reported, as the
// CPU's serial scan of the offset finds it (the same pair on every run).
__global__ void FirstPairKernel(const int64_t* __restrict__ splits,
                                const int32_t* __restrict__ in_rows, int64_t K,
                                int64_t P, int64_t n_in, unsigned int* first) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       p < P; p += step) {
    const int64_t k = OffsetOf(splits, K, p);
    const int32_t i = in_rows[p];
    if (i >= 0 && i < n_in)
      atomicMin(&first[k * n_in + i], static_cast<unsigned int>(p));
  }
}

__global__ void RepeatedPairKernel(const int64_t* __restrict__ splits,
                                   const int32_t* __restrict__ in_rows,
                                   int64_t K, int64_t P, int64_t n_in,
                                   const unsigned int* __restrict__ first,
                                   KernelMapCheck* check) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       p < P; p += step) {
    const int64_t k = OffsetOf(splits, K, p);
    const int32_t i = in_rows[p];
    if (i >= 0 && i < n_in &&
        first[k * n_in + i] < static_cast<unsigned int>(p)) {
      atomicMin(reinterpret_cast<ull*>(&check->repeated_pair),
                static_cast<ull>(p));
    }
  }
}

__global__ void RepeatedRowKernel(const int32_t* __restrict__ in_rows,
                                  KernelMapCheck* check) {
  if (check->repeated_pair != kNone)
    check->repeated_row = in_rows[check->repeated_pair];
}

struct TransposeBuffers {
  int32_t* table;
  Compaction compaction;
  size_t bytes;
};

TransposeBuffers CarveTranspose(Carver* c, int64_t n_in, int64_t K) {
  TransposeBuffers b;
  b.table = c->Take<int32_t>(CountProduct(K, n_in));
  b.compaction = CarveCompaction(c, CountProduct(K, n_in));
  b.bytes = 0;
  return b;
}

}  // namespace

Status KernelMapInfoStatus(const KernelMapInfo& info) {
  if (info.negative_in_row != kNone) {
    return Status::Error("in_coordinates row " +
                         std::to_string(info.negative_in_row) +
                         " has a negative batch index " +
                         std::to_string(info.negative_in_value));
  }
  if (info.negative_out_row != kNone) {
    return Status::Error("out_coordinates row " +
                         std::to_string(info.negative_out_row) +
                         " has a negative batch index " +
                         std::to_string(info.negative_out_value));
  }
  if (info.error == kMapKeyTooWide) return KeyWidthStatus(info.layout);
  if (info.error == kMapDuplicate) {
    const uint64_t a = info.duplicate & 0xffffffffull;
    const uint64_t b = info.duplicate >> 32;
    std::string site;
    for (int d = 0; d < info.layout.dims; ++d) {
      site += (d ? ", " : "") + std::to_string(info.duplicate_site[d]);
    }
    return Status::Error("coordinates has duplicate sites: rows " +
                         std::to_string(a) + " and " + std::to_string(b) +
                         " are both [" + site +
                         "]; merge duplicates first, e.g. with "
                         "sparse_ops.utils.sparse_quantize");
  }
  if (info.error != kMapOk) {
    return Status::Error("sparse_ops GPU kernel map: unknown error " +
                         std::to_string(info.error));
  }
  return Status::Ok();
}

Status CopyToHost(void* host, const void* device, size_t bytes,
                  GpuStream stream) {
  const cudaError_t e =
      cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, stream);
  if (e == cudaSuccess) return Status::Ok();
  return Status::Internal(std::string("CUDA error in sparse_ops CopyToHost: ") +
                          cudaGetErrorString(e));
}

size_t KernelMapWorkspaceBytes(int64_t n_in, int64_t n_out,
                               int64_t num_offsets) {
  return CarveMap(nullptr, n_in, n_out, num_offsets).bytes;
}

Status KernelMapCount(const int32_t* in_coords, int64_t n_in,
                      const int32_t* out_coords, int64_t n_out, int dims,
                      const DeviceGeometry& geometry, bool same_coordinates,
                      KernelMapInfo* info, void* workspace,
                      size_t workspace_bytes, GpuStream stream) {
  const int64_t K = geometry.num_offsets;
  Status status = CheckSizes(n_in, n_out, K);
  if (!status.ok()) return status;
  if (dims < 1 || dims > kMaxDims) {
    return Status::Error("coordinates have " + std::to_string(dims) +
                         " columns; 2 to " + std::to_string(kMaxDims) +
                         " (batch + spatial axes) are supported");
  }
  const MapBuffers b = CarveMap(workspace, n_in, n_out, K);
  status = CheckWorkspace(workspace_bytes, b.bytes, "KernelMapCount");
  if (!status.ok()) return status;
  same_coordinates = same_coordinates && n_in == n_out;
  const uint64_t mask = static_cast<uint64_t>(b.capacity - 1);

  InitInfoKernel<<<1, 32, 0, stream>>>(info);
  if (n_in > 0) {
    BoundsKernel<<<GridFor(n_in, 1024), kThreads, 0, stream>>>(in_coords, n_in,
                                                               dims, info);
  }
  if (!same_coordinates && n_out > 0) {
    NegativeBatchKernel<<<GridFor(n_out, 1024), kThreads, 0, stream>>>(
        out_coords, n_out, dims, &info->negative_out_row);
  }
  LayoutKernel<<<1, 1, 0, stream>>>(info, dims, geometry.offsets, K,
                                    same_coordinates);
  TableInitKernel<<<GridFor(b.capacity), kThreads, 0, stream>>>(b.keys, b.rows,
                                                                b.capacity);
  if (n_in > 0) {
    const int grid = static_cast<int>(CeilDiv(n_in, kThreads));
    SPARSE_OPS_DISPATCH_DIMS(dims, InsertKernel, grid, kThreads, stream,
                             in_coords, n_in, dims, info, b.keys, b.rows, mask);
    SPARSE_OPS_DISPATCH_DIMS(dims, DuplicateKernel, grid, kThreads, stream,
                             in_coords, n_in, dims, info, b.keys, b.rows, mask);
  }
  if (b.entries > 0) {
    if (same_coordinates) {
      cudaMemsetAsync(b.nbr, 0xff, b.entries * sizeof(int32_t), stream);
    }
    const dim3 grid(static_cast<unsigned>(CeilDiv(n_out, kThreads)),
                    static_cast<unsigned>(std::min<int64_t>(K, 65535)));
    SPARSE_OPS_DISPATCH_DIMS(dims, ProbeKernel, grid, kThreads, stream,
                             out_coords, n_out, dims, geometry.offsets, K,
                             geometry.stride, info, b.keys, b.rows, mask,
                             b.nbr);
  }
  LaunchCountScan(b.nbr, b.entries, b.compaction, info, stream);
  FinishInfoKernel<<<1, 1, 0, stream>>>(
      info, in_coords, same_coordinates ? in_coords : out_coords, dims);
  return LaunchStatus("KernelMapCount");
}

Status KernelMapFill(int64_t n_in, int64_t n_out, int64_t num_offsets,
                     int64_t* splits, int32_t* in_rows, int32_t* out_rows,
                     void* workspace, size_t workspace_bytes,
                     GpuStream stream) {
  Status status = CheckSizes(n_in, n_out, num_offsets);
  if (!status.ok()) return status;
  const MapBuffers b = CarveMap(workspace, n_in, n_out, num_offsets);
  status = CheckWorkspace(workspace_bytes, b.bytes, "KernelMapFill");
  if (!status.ok()) return status;
  LaunchFill(b.nbr, b.entries, n_out, b.compaction, num_offsets, splits,
             in_rows, out_rows, stream);
  return LaunchStatus("KernelMapFill");
}

Status KeyLayoutOf(const int32_t* coords, int64_t n, int dims,
                   KernelMapInfo* info, GpuStream stream) {
  InitInfoKernel<<<1, 32, 0, stream>>>(info);
  if (n > 0) {
    BoundsKernel<<<GridFor(n, 1024), kThreads, 0, stream>>>(coords, n, dims,
                                                            info);
  }
  LayoutKernel<<<1, 1, 0, stream>>>(info, dims, nullptr, 0, false);
  return LaunchStatus("KeyLayoutOf");
}

Status PackKeys(const int32_t* coords, int64_t n, int dims,
                const KernelMapInfo* info, uint64_t* keys, GpuStream stream) {
  if (n <= 0) return Status::Ok();
  if (dims < 1 || dims > kMaxDims) {
    return Status::Error("PackKeys: dims must be in [1, 32]");
  }
  const int grid = static_cast<int>(CeilDiv(n, kThreads));
  SPARSE_OPS_DISPATCH_DIMS(dims, PackKeysKernel, grid, kThreads, stream, coords,
                           n, dims, info, keys);
  return LaunchStatus("PackKeys");
}

Status CheckKernelMap(const DeviceKernelMap& map, int64_t n_in, int64_t n_out,
                      KernelMapCheck* check, GpuStream stream) {
  CheckSplitsKernel<<<1, 1, 0, stream>>>(map.splits, map.num_offsets,
                                         map.num_pairs, check);
  if (map.num_pairs > 0) {
    CheckPairsKernel<<<GridFor(map.num_pairs), kThreads, 0, stream>>>(
        map.splits, map.in_rows, map.out_rows, map.num_offsets, map.num_pairs,
        n_in, n_out, check);
    CheckFinishKernel<<<1, 1, 0, stream>>>(map.in_rows, map.out_rows, check);
  }
  return LaunchStatus("CheckKernelMap");
}

Status KernelMapCheckStatus(const KernelMapCheck& check, int64_t num_pairs,
                            int64_t n_in, int64_t n_out) {
  if (check.bad_splits == 1) {
    return Status::Error(
        "kernel map offset_splits must start at 0 and end at "
        "the number of pairs " +
        std::to_string(num_pairs));
  }
  if (check.bad_splits != 0) {
    return Status::Error("kernel map offset_splits must be non-decreasing");
  }
  if (check.bad_pair != kNone) {
    return Status::Error(
        "kernel map pair " + std::to_string(check.bad_pair) + " (in row " +
        std::to_string(check.in_row) + ", out row " +
        std::to_string(check.out_row) + ") is out of range for " +
        std::to_string(n_in) + " input and " + std::to_string(n_out) +
        " output rows, or out rows are not increasing within an offset");
  }
  if (check.repeated_pair != kNone) {
    return Status::Error(
        "kernel map pair " + std::to_string(check.repeated_pair) +
        " repeats input row " + std::to_string(check.repeated_row) +
        " within one offset; a kernel map pairs each input row at "
        "most once per offset");
  }
  return Status::Ok();
}

size_t TransposeKernelMapWorkspaceBytes(int64_t n_in, int64_t num_offsets) {
  Carver c(nullptr);
  CarveTranspose(&c, n_in, num_offsets);
  return c.used();
}

namespace {
Status LaunchTranspose(const DeviceKernelMap& map, int64_t n_in,
                       int32_t* t_in_rows, int32_t* t_out_rows,
                       const TransposeBuffers& b, KernelMapCheck* check,
                       cudaStream_t stream) {
  const int64_t K = map.num_offsets, E = K * n_in;
  if (E == 0) return Status::Ok();
  // (Pair indices fit the table's 32 bits below 2^32 - 1 pairs.)
  if (check != nullptr && map.num_pairs > 0 && map.num_pairs < 0xffffffffll) {
    auto* first = reinterpret_cast<unsigned int*>(b.table);
    cudaMemsetAsync(first, 0xff, E * sizeof(unsigned int), stream);
    const int grid = GridFor(map.num_pairs, 8192);
    FirstPairKernel<<<grid, kThreads, 0, stream>>>(map.splits, map.in_rows, K,
                                                   map.num_pairs, n_in, first);
    RepeatedPairKernel<<<grid, kThreads, 0, stream>>>(
        map.splits, map.in_rows, K, map.num_pairs, n_in, first, check);
    RepeatedRowKernel<<<1, 1, 0, stream>>>(map.in_rows, check);
  }
  cudaMemsetAsync(b.table, 0xff, E * sizeof(int32_t), stream);
  if (map.num_pairs > 0) {
    TransposeScatterKernel<<<GridFor(map.num_pairs, 8192), kThreads, 0,
                             stream>>>(map.splits, map.in_rows, map.out_rows, K,
                                       map.num_pairs, n_in, b.table);
  }
  LaunchCountScan(b.table, E, b.compaction, nullptr, stream);
  LaunchFill(b.table, E, n_in, b.compaction, K, nullptr, t_in_rows, t_out_rows,
             stream);
  return LaunchStatus("TransposeKernelMap");
}
}  // namespace

Status TransposeKernelMap(const DeviceKernelMap& map, int64_t n_in,
                          int32_t* t_in_rows, int32_t* t_out_rows,
                          void* workspace, size_t workspace_bytes,
                          GpuStream stream, KernelMapCheck* check) {
  Carver c(workspace);
  const TransposeBuffers b = CarveTranspose(&c, n_in, map.num_offsets);
  const Status status =
      CheckWorkspace(workspace_bytes, c.used(), "TransposeKernelMap");
  if (!status.ok()) return status;
  return LaunchTranspose(map, n_in, t_in_rows, t_out_rows, b, check, stream);
}

size_t StridedCoordinatesWorkspaceBytes(int64_t n) {
  return CarveStrided(nullptr, n).bytes;
}

Status StridedCoordinatesCount(const int32_t* coords, int64_t n, int dims,
                               const Stride& stride, KernelMapInfo* info,
                               void* workspace, size_t workspace_bytes,
                               GpuStream stream) {
  if (n < 0 || n >= kInt32Max || dims < 1 || dims > kMaxDims) {
    return Status::Error(
        "sparse_ops GPU StridedCoordinates: " + std::to_string(n) +
        " rows of " + std::to_string(dims) + " columns are not supported");
  }
  const StridedBuffers b = CarveStrided(workspace, n);
  Status status =
      CheckWorkspace(workspace_bytes, b.bytes, "StridedCoordinates");
  if (!status.ok()) return status;
  InitInfoKernel<<<1, 32, 0, stream>>>(info);
  if (n > 0) {
    BoundsKernel<<<GridFor(n, 1024), kThreads, 0, stream>>>(coords, n, dims,
                                                            info);
  }
  StridedLayoutKernel<<<1, 1, 0, stream>>>(info, dims, stride);
  FinishInfoKernel<<<1, 1, 0, stream>>>(info, coords, coords,
                                        dims);            // the negative batch
  if (n == 0) return LaunchStatus("StridedCoordinates");  // num_pairs stays 0
  const int grid = static_cast<int>(CeilDiv(n, kThreads));
  SPARSE_OPS_DISPATCH_DIMS(dims, StridedPackKernel, grid, kThreads, stream,
                           coords, n, dims, stride, info, b.keys);
  return SortUniqueKeys(b, n, &info->num_pairs, stream, "StridedCoordinates");
}

Status StridedCoordinatesInfoStatus(const KernelMapInfo& info) {
  return SitesInfoStatus(info, "StridedCoordinates");
}

Status StridedCoordinatesFill(const KernelMapInfo* info, int64_t n, int dims,
                              int64_t num_sites, int32_t* out, void* workspace,
                              size_t workspace_bytes, GpuStream stream) {
  const StridedBuffers b =
      CarveStrided(workspace, n);  // where Count left the keys
  const Status status =
      CheckWorkspace(workspace_bytes, b.bytes, "StridedCoordinates");
  if (!status.ok()) return status;
  return UnpackSites(b, n, info, dims, num_sites, out, stream,
                     "StridedCoordinates");
}

namespace {

struct GenerativeBuffers {
  StridedBuffers keys;  // the sort and unique of the n * K candidates
  StepBounds* steps;
  size_t bytes;
};

GenerativeBuffers CarveGenerative(void* workspace, int64_t n, int64_t K) {
  GenerativeBuffers b;
  const int64_t candidates = CountProduct(n, K);
  b.keys = CarveStrided(workspace, candidates);
  Carver c(workspace);
  c.TakeBytes(b.keys.bytes);  // the candidates' buffers, then the step bounds
  b.steps = c.Take<StepBounds>(1);
  b.bytes = c.used();
  return b;
}

}  // namespace

size_t GenerativeCoordinatesWorkspaceBytes(int64_t n, int64_t num_offsets) {
  return CarveGenerative(nullptr, n, num_offsets).bytes;
}

Status GenerativeCoordinatesCount(const int32_t* coords, int64_t n, int dims,
                                  const DeviceGeometry& geometry,
                                  KernelMapInfo* info, void* workspace,
                                  size_t workspace_bytes, GpuStream stream) {
  const int64_t K = geometry.num_offsets;
  const int64_t candidates = CountProduct(n, K);
  if (n < 0 || K < 0 || dims < 1 || dims > kMaxDims) {
    return Status::Error("sparse_ops GPU GenerativeCoordinates: bad sizes");
  }
  if (candidates < 0 || candidates >= kInt32Max) {
    return Status::Error(
        "the GPU GenerativeCoordinates supports fewer than 2^31 - 1 candidate "
        "sites "
        "(rows x offsets), got " +
        std::to_string(n) + " x " + std::to_string(K));
  }
  const GenerativeBuffers b = CarveGenerative(workspace, n, K);
  Status status =
      CheckWorkspace(workspace_bytes, b.bytes, "GenerativeCoordinates");
  if (!status.ok()) return status;
  InitInfoKernel<<<1, 32, 0, stream>>>(info);
  StepBoundsInitKernel<<<1, 32, 0, stream>>>(b.steps);
  if (n > 0) {
    BoundsKernel<<<GridFor(n, 1024), kThreads, 0, stream>>>(coords, n, dims,
                                                            info);
  }
  if (K > 0) {
    StepBoundsKernel<<<GridFor(K, 1024), kThreads, 0, stream>>>(
        geometry.offsets, K, dims, geometry.stride, b.steps);
  }
  GenerativeLayoutKernel<<<1, 1, 0, stream>>>(info, dims, K, b.steps);
  FinishInfoKernel<<<1, 1, 0, stream>>>(info, coords, coords,
                                        dims);  // the negative batch
  if (candidates == 0)
    return LaunchStatus("GenerativeCoordinates");  // no sites
  SPARSE_OPS_DISPATCH_DIMS(
      dims, GenerativePackKernel, GridFor(candidates, 65535), kThreads, stream,
      coords, n, dims, geometry.offsets, K, geometry.stride, info, b.keys.keys);
  return SortUniqueKeys(b.keys, candidates, &info->num_pairs, stream,
                        "GenerativeCoordinates");
}

Status GenerativeCoordinatesInfoStatus(const KernelMapInfo& info) {
  return SitesInfoStatus(info, "GenerativeCoordinates");
}

Status GenerativeCoordinatesFill(const KernelMapInfo* info, int64_t n,
                                 int64_t num_offsets, int dims,
                                 int64_t num_sites, int32_t* out,
                                 void* workspace, size_t workspace_bytes,
                                 GpuStream stream) {
  const GenerativeBuffers b = CarveGenerative(workspace, n, num_offsets);
  const Status status =
      CheckWorkspace(workspace_bytes, b.bytes, "GenerativeCoordinates");
  if (!status.ok()) return status;
  return UnpackSites(b.keys, CountProduct(n, num_offsets), info, dims,
                     num_sites, out, stream, "GenerativeCoordinates");
}

size_t CoordinateLookupWorkspaceBytes(int64_t n) {
  return KernelMapWorkspaceBytes(n, n, 0);
}

Status CoordinateLookup(const int32_t* coords, int64_t n, int dims,
                        const int32_t* queries, int64_t num_queries,
                        int32_t* rows, KernelMapInfo* info, void* workspace,
                        size_t workspace_bytes, GpuStream stream) {
  if (num_queries < 0 || num_queries >= kInt32Max) {
    return Status::Error(
        "sparse_ops GPU CoordinateLookup: " + std::to_string(num_queries) +
        " queries are not supported");
  }
  // The kernel map's count without offsets: bounds, layout, the hash table
  // of coords and its duplicate check.
  const DeviceGeometry none{nullptr, 0, {}};
  Status status = KernelMapCount(coords, n, coords, n, dims, none,
                                 /*same_coordinates=*/true, info, workspace,
                                 workspace_bytes, stream);
  if (!status.ok() || num_queries == 0) return status;
  const MapBuffers b = CarveMap(workspace, n, n, 0);
  const int grid = static_cast<int>(CeilDiv(num_queries, kThreads));
  SPARSE_OPS_DISPATCH_DIMS(dims, LookupKernel, grid, kThreads, stream, queries,
                           num_queries, dims, info, b.keys, b.rows,
                           static_cast<uint64_t>(b.capacity - 1), rows);
  return LaunchStatus("CoordinateLookup");
}

Status CoordinateLookupInfoStatus(const KernelMapInfo& info) {
  if (info.negative_in_row != kNone) {
    return Status::Error("coordinates row " +
                         std::to_string(info.negative_in_row) +
                         " has a negative batch index " +
                         std::to_string(info.negative_in_value));
  }
  return KernelMapInfoStatus(info);  // key width, duplicate sites
}

// --- Coordinate union
// ------------------------------------------------------------------ The inputs
// concatenated; their keys sorted stably with their positions, so each site's
// entries are adjacent with positions increasing (the CPU's sort of (key,
// position)); run heads are first appearances, numbered in position order by an
// exclusive scan.

namespace {

struct UnionBuffers {
  int32_t* coords;    // [total, dims], the inputs concatenated
  int32_t* input_of;  // [total] by position
  uint64_t *keys, *sorted_keys;
  int32_t *positions, *sorted_positions;
  int32_t* is_first;   // [total] by position: a site's first appearance
  int32_t* union_row;  // [total] by position: exclusive scan of is_first
  int32_t* run_mark;   // [total] by sorted index: e at a run head, else 0
  int32_t* run_head;   // inclusive max scan of run_mark
  int32_t* rows;       // [total] by position: its union row
  void* temp;
  size_t temp_bytes;
  size_t bytes;
};

size_t UnionTempBytes(int64_t total) {
  const int items = static_cast<int>(std::min<int64_t>(total, kInt32Max));
  size_t sort = 0, sum = 0, max_scan = 0;
  const cudaError_t e1 = cub::DeviceRadixSort::SortPairs(
      nullptr, sort, static_cast<const uint64_t*>(nullptr),
      static_cast<uint64_t*>(nullptr), static_cast<const int32_t*>(nullptr),
      static_cast<int32_t*>(nullptr), items);
  const cudaError_t e2 = cub::DeviceScan::ExclusiveSum(
      nullptr, sum, static_cast<const int32_t*>(nullptr),
      static_cast<int32_t*>(nullptr), items);
  const cudaError_t e3 = cub::DeviceScan::InclusiveScan(
      nullptr, max_scan, static_cast<const int32_t*>(nullptr),
      static_cast<int32_t*>(nullptr), MaxOf(), items);
  if (e1 != cudaSuccess || e2 != cudaSuccess || e3 != cudaSuccess)
    return SIZE_MAX;
  return std::max({sort, sum, max_scan});
}

UnionBuffers CarveUnion(void* workspace, int64_t total, int dims) {
  Carver c(workspace);
  UnionBuffers b;
  b.coords = c.Take<int32_t>(CountProduct(total, dims));
  b.input_of = c.Take<int32_t>(total);
  b.keys = c.Take<uint64_t>(total);
  b.sorted_keys = c.Take<uint64_t>(total);
  b.positions = c.Take<int32_t>(total);
  b.sorted_positions = c.Take<int32_t>(total);
  b.is_first = c.Take<int32_t>(total);
  b.union_row = c.Take<int32_t>(total);
  b.run_mark = c.Take<int32_t>(total);
  b.run_head = c.Take<int32_t>(total);
  b.rows = c.Take<int32_t>(total);
  b.temp_bytes = UnionTempBytes(total);
  b.temp = c.TakeBytes(b.temp_bytes);
  b.bytes = c.used();
  return b;
}

// Positions [offset, offset + size) belong to input `input`.
__global__ void UnionPositionsKernel(int32_t* positions, int32_t* input_of,
                                     int64_t offset, int64_t size,
                                     int32_t input) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       r < size; r += step) {
    positions[offset + r] = static_cast<int32_t>(offset + r);
    input_of[offset + r] = input;
  }
}

// Run heads, and the smallest sorted index whose entry repeats a site of
// the same input (the CPU reports the first such pair in sorted order).
__global__ void UnionRunsKernel(const uint64_t* __restrict__ keys,
                                const int32_t* __restrict__ positions,
                                const int32_t* __restrict__ input_of,
                                int64_t total, int32_t* is_first,
                                int32_t* run_mark, KernelMapInfo* info) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       e < total; e += step) {
    const bool head = e == 0 || keys[e] != keys[e - 1];
    is_first[positions[e]] = head;
    run_mark[e] = head ? static_cast<int32_t>(e) : 0;
    if (!head && input_of[positions[e]] == input_of[positions[e - 1]]) {
      atomicMin(reinterpret_cast<ull*>(&info->duplicate), static_cast<ull>(e));
    }
  }
}

__global__ void UnionRowsKernel(const int32_t* __restrict__ positions,
                                const int32_t* __restrict__ run_head,
                                const int32_t* __restrict__ union_row,
                                int64_t total, int32_t* rows) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       e < total; e += step) {
    rows[positions[e]] = union_row[positions[run_head[e]]];
  }
}

// One thread: the site count, and the duplicate as its two positions.
__global__ void UnionFinishKernel(const int32_t* __restrict__ positions,
                                  const int32_t* __restrict__ is_first,
                                  const int32_t* __restrict__ union_row,
                                  int64_t total, KernelMapInfo* info) {
  info->num_pairs =
      total == 0 ? 0 : int64_t{union_row[total - 1]} + is_first[total - 1];
  if (info->error == kMapOk && info->duplicate != kNone) {
    const int64_t e = static_cast<int64_t>(info->duplicate);
    info->error = kMapDuplicate;
    info->duplicate = (static_cast<uint64_t>(positions[e]) << 32) |
                      static_cast<uint32_t>(positions[e - 1]);
  }
}

__global__ void UnionSitesKernel(const int32_t* __restrict__ coords,
                                 const int32_t* __restrict__ is_first,
                                 const int32_t* __restrict__ union_row,
                                 int64_t total, int dims, int32_t* out) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       p < total; p += step) {
    if (!is_first[p]) continue;
    const int64_t u = union_row[p];
    for (int a = 0; a < dims; ++a) out[u * dims + a] = coords[p * dims + a];
  }
}

}  // namespace

size_t CoordinateUnionWorkspaceBytes(int64_t total, int dims) {
  return CarveUnion(nullptr, total, dims).bytes;
}

Status CoordinateUnionCount(const int32_t* const* inputs, const int64_t* sizes,
                            int num_inputs, int dims, int32_t* const* rows,
                            KernelMapInfo* info, void* workspace,
                            size_t workspace_bytes, GpuStream stream) {
  int64_t total = 0;
  for (int i = 0; i < num_inputs; ++i) total += sizes[i];
  if (num_inputs < 1 || total < 0 || total >= kInt32Max || dims < 1 ||
      dims > kMaxDims) {
    return Status::Error(
        "sparse_ops GPU CoordinateUnion: " + std::to_string(total) +
        " rows of " + std::to_string(dims) + " columns are not supported");
  }
  const UnionBuffers b = CarveUnion(workspace, total, dims);
  Status status = CheckWorkspace(workspace_bytes, b.bytes, "CoordinateUnion");
  if (!status.ok()) return status;
  int64_t offset = 0;
  for (int i = 0; i < num_inputs; ++i) {
    if (sizes[i] > 0) {
      const cudaError_t e = cudaMemcpyAsync(b.coords + offset * dims, inputs[i],
                                            sizes[i] * dims * sizeof(int32_t),
                                            cudaMemcpyDeviceToDevice, stream);
      if (e != cudaSuccess) return CudaStatus(e, "CoordinateUnion");
      UnionPositionsKernel<<<GridFor(sizes[i]), kThreads, 0, stream>>>(
          b.positions, b.input_of, offset, sizes[i], i);
    }
    offset += sizes[i];
  }
  status = KeyLayoutOf(b.coords, total, dims, info, stream);
  if (!status.ok()) return status;
  FinishInfoKernel<<<1, 1, 0, stream>>>(info, b.coords, b.coords,
                                        dims);             // the negative batch
  if (total == 0) return LaunchStatus("CoordinateUnion");  // no sites, no rows
  const int grid = static_cast<int>(CeilDiv(total, kThreads));
  SPARSE_OPS_DISPATCH_DIMS(dims, PackKeysKernel, grid, kThreads, stream,
                           b.coords, total, dims, info, b.keys);
  const int items = static_cast<int>(total);
  size_t temp_bytes = b.temp_bytes;
  cudaError_t e = cub::DeviceRadixSort::SortPairs(
      b.temp, temp_bytes, b.keys, b.sorted_keys, b.positions,
      b.sorted_positions, items, 0, 64, stream);
  if (e != cudaSuccess) return CudaStatus(e, "CoordinateUnion");
  UnionRunsKernel<<<GridFor(total), kThreads, 0, stream>>>(
      b.sorted_keys, b.sorted_positions, b.input_of, total, b.is_first,
      b.run_mark, info);
  temp_bytes = b.temp_bytes;
  e = cub::DeviceScan::ExclusiveSum(b.temp, temp_bytes, b.is_first, b.union_row,
                                    items, stream);
  if (e != cudaSuccess) return CudaStatus(e, "CoordinateUnion");
  temp_bytes = b.temp_bytes;
  e = cub::DeviceScan::InclusiveScan(b.temp, temp_bytes, b.run_mark, b.run_head,
                                     MaxOf(), items, stream);
  if (e != cudaSuccess) return CudaStatus(e, "CoordinateUnion");
  UnionRowsKernel<<<GridFor(total), kThreads, 0, stream>>>(
      b.sorted_positions, b.run_head, b.union_row, total, b.rows);
  UnionFinishKernel<<<1, 1, 0, stream>>>(b.sorted_positions, b.is_first,
                                         b.union_row, total, info);
  offset = 0;
  for (int i = 0; i < num_inputs; ++i) {
    if (sizes[i] > 0) {
      e = cudaMemcpyAsync(rows[i], b.rows + offset, sizes[i] * sizeof(int32_t),
                          cudaMemcpyDeviceToDevice, stream);
      if (e != cudaSuccess) return CudaStatus(e, "CoordinateUnion");
    }
    offset += sizes[i];
  }
  return LaunchStatus("CoordinateUnion");
}

Status CoordinateUnionInfoStatus(const KernelMapInfo& info,
                                 const int64_t* sizes, int num_inputs) {
  // The input and its row of a position in the concatenation.
  auto locate = [&](uint64_t position, int* input, int64_t* row) {
    int64_t p = static_cast<int64_t>(position);
    int i = 0;
    while (i + 1 < num_inputs && p >= sizes[i]) p -= sizes[i++];
    *input = i;
    *row = p;
  };
  int input;
  int64_t row;
  if (info.negative_in_row != kNone) {
    locate(info.negative_in_row, &input, &row);
    return Status::Error("coordinates[" + std::to_string(input) + "] row " +
                         std::to_string(row) + " has a negative batch index " +
                         std::to_string(info.negative_in_value));
  }
  if (info.error == kMapKeyTooWide) return KeyWidthStatus(info.layout);
  if (info.error == kMapDuplicate) {
    int64_t earlier;
    locate(info.duplicate & 0xffffffffull, &input, &earlier);
    locate(info.duplicate >> 32, &input, &row);
    return Status::Error("coordinates[" + std::to_string(input) +
                         "] has duplicate sites: rows " +
                         std::to_string(earlier) + " and " +
                         std::to_string(row) +
                         " are equal; merge duplicates first, e.g. with "
                         "sparse_ops.utils.sparse_quantize");
  }
  if (info.error != kMapOk) {
    return Status::Internal("sparse_ops GPU CoordinateUnion: unknown error " +
                            std::to_string(info.error));
  }
  return Status::Ok();
}

Status CoordinateUnionFill(int64_t total, int dims, int32_t* out,
                           void* workspace, size_t workspace_bytes,
                           GpuStream stream) {
  const UnionBuffers b =
      CarveUnion(workspace, total, dims);  // where Count left its work
  const Status status =
      CheckWorkspace(workspace_bytes, b.bytes, "CoordinateUnion");
  if (!status.ok() || total == 0) return status;
  UnionSitesKernel<<<GridFor(total), kThreads, 0, stream>>>(
      b.coords, b.is_first, b.union_row, total, dims, out);
  return LaunchStatus("CoordinateUnion");
}

}  // namespace gpu
}  // namespace sparse_ops
