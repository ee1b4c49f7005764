// CUDA half of the framework-free core. See core_gpu.h for the contracts.
//
// Kernel map: per-axis bounds (atomic min/max) -> key layout (one thread,
// KeyPacker::Finalize's rules) -> open-addressing hash table (atomicCAS on
// 64-bit keys; each slot keeps the smallest row, so duplicates are reported
// deterministically) -> neighbour table nbr[k * n_out + o] (one thread per
// (o, k); symmetric submanifold maps probe half the offsets and mirror) ->
// stream compaction of the neighbour table in (k, o) order: per-block
// counts, one exclusive scan, then a ballot-based fill. Pairs come out
// sorted by output row within each offset, exactly as on the CPU.
//
// Convolution: output-stationary tiles. One thread block owns BM output
// rows x BN output channels, keeps them in shared memory, and applies the
// offsets in order: for offset k it gathers the (at most BM) input rows
// whose pairs land in its rows, multiplies them by W_k in registers and adds
// each product row to its output row. Within an offset every output row
// occurs once, so no atomics are needed, and every output element is
// summed in the same order on every run.
//
// Weight gradient: each offset's pairs are cut into segments of S pairs (S a
// function of P and K only); a block computes one segment's partial
// X^T dY tile, and a second kernel adds the partials of each offset in
// segment order.
#include "kernels/cuda/core_gpu.h"

#include <cuda_runtime.h>

#include "kernels/cuda/launch.cu.h"

#include <algorithm>
#include <cstdint>
#include <string>

namespace sparse_ops {
namespace gpu {
namespace {

constexpr uint64_t kEmptyKey = ~uint64_t{0};
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

__host__ __device__ inline int BitsFor(int64_t span) {
  int bits = 0;
  while (bits < 63 && (span >> bits) != 0) ++bits;
  return bits;
}

__device__ __forceinline__ uint64_t Hash(uint64_t k) {  // murmur3 finaliser
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ULL;
  k ^= k >> 33;
  return k;
}

// --- Key layout -----------------------------------------------------------------

struct SharedLayout {
  int64_t lo[kMaxDims];
  int64_t span[kMaxDims];
  int32_t shift[kMaxDims];
};

__device__ void LoadLayout(const KeyLayout& layout, int dims,
                           SharedLayout* s) {
  for (int a = threadIdx.x; a < dims; a += blockDim.x) {
    s->lo[a] = layout.lo[a];
    s->span[a] = layout.span[a];
    s->shift[a] = layout.shift[a];
  }
}

// D > 0: dims known at compile time (registers); D == 0: any dims.
template <int D>
__device__ __forceinline__ bool Pack(const int64_t* q, int dims,
                                     const SharedLayout& l, uint64_t* key) {
  uint64_t k = 0;
#pragma unroll
  for (int a = 0; a < (D > 0 ? D : kMaxDims); ++a) {
    if (D == 0 && a >= dims) break;
    const int64_t v = q[a] - l.lo[a];
    if (v < 0 || v > l.span[a]) return false;
    k |= static_cast<uint64_t>(v) << l.shift[a];
  }
  *key = k;
  return true;
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
  uint64_t slot = Hash(key) & mask;
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
    info->pad = 0;
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
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x +
                        threadIdx.x;
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
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x +
                   threadIdx.x;
       i < n; i += step) {
    if (coords[i * dims] < 0) {
      atomicMin(reinterpret_cast<ull*>(first), static_cast<ull>(i));
    }
  }
}

// KeyPacker::Finalize on the device (one thread), plus the mirror decision
// (IsSymmetric) for maps between identical coordinate sets.
__global__ void LayoutKernel(KernelMapInfo* info, int dims,
                             const int32_t* __restrict__ offsets, int64_t K,
                             bool same_coordinates) {
  KeyLayout& l = info->layout;
  l.dims = dims;
  int total = 0;
  for (int a = dims - 1; a >= 0; --a) {
    int64_t lo = info->lo[a], hi = info->hi[a];
    if (lo > hi) lo = hi = 0;  // no rows: empty range
    l.lo[a] = lo;
    l.span[a] = hi - lo;
    l.shift[a] = total;
    l.bits[a] = BitsFor(hi - lo);
    total += l.bits[a];
  }
  l.total_bits = total;
  if (total > kMaxKeyBits) info->error = kMapKeyTooWide;
  int mirrored = 0;
  if (same_coordinates) {
    mirrored = 1;
    const int d = dims - 1;
    for (int64_t k = 0; k < K && mirrored; ++k) {
      for (int j = 0; j < d; ++j) {
        if (offsets[k * d + j] != -offsets[(K - 1 - k) * d + j]) {
          mirrored = 0;
          break;
        }
      }
    }
  }
  info->mirrored = mirrored;
}

__global__ void TableInitKernel(uint64_t* keys, int32_t* rows,
                                int64_t capacity) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x +
                   threadIdx.x;
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
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x +
                    threadIdx.x;
  if (i >= n) return;
  int64_t q[D > 0 ? D : kMaxDims];
  LoadRow<D>(coords, i, dims, q);
  uint64_t key;
  if (!Pack<D>(q, dims, layout, &key)) return;  // cannot happen: own range
  uint64_t slot = Hash(key) & mask;
  while (true) {
    const ull prev = atomicCAS(reinterpret_cast<ull*>(&keys[slot]),
                               static_cast<ull>(kEmptyKey),
                               static_cast<ull>(key));
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
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x +
                    threadIdx.x;
  if (i >= n) return;
  int64_t q[D > 0 ? D : kMaxDims];
  LoadRow<D>(coords, i, dims, q);
  uint64_t key;
  if (!Pack<D>(q, dims, layout, &key)) return;
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
                            const Stride stride,
                            const KernelMapInfo* info,
                            const uint64_t* __restrict__ keys,
                            const int32_t* __restrict__ rows, uint64_t mask,
                            int32_t* nbr) {
  __shared__ SharedLayout layout;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x +
                    threadIdx.x;
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
        Pack<D>(q, dims, layout, &key) ? Find(keys, rows, mask, key) : -1;
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
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x +
                    threadIdx.x;
  if (i >= n) return;
  int64_t q[D > 0 ? D : kMaxDims];
  LoadRow<D>(coords, i, dims, q);
  uint64_t key;
  keys[i] = (!bad && Pack<D>(q, dims, layout, &key)) ? key : kEmptyKey;
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

// --- Stream compaction of a neighbour table ------------------------------------------
// table [E] (E = K * n_cols) in (k, col) order -> pairs (table[e], e % n_cols)
// for table[e] >= 0, in the same order.

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
    ScanKernel(const int32_t* __restrict__ counts, int64_t nb,
               int64_t* offsets, int64_t* total, KernelMapInfo* info) {
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
                           int64_t n_cols,
                           const int64_t* __restrict__ offsets,
                           const int64_t* __restrict__ total, int64_t K,
                           int64_t* splits, int32_t* rows_a,
                           int32_t* rows_b) {
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
    for (int j = 0; j < kItems; ++j) warp_base[j * kWarps + warp] = __popc(bal[j]);
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
  FillKernel<<<c.blocks, kThreads, 0, stream>>>(table, E, n_cols, c.offsets,
                                                c.total, K, splits, rows_a,
                                                rows_b);
}

// --- Kernel map workspace ----------------------------------------------------------

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
  if (n_in < 0 || n_out < 0 || n_in >= kMaxRows || n_out >= kMaxRows ||
      K < 0) {
    return Status::Error("sparse_ops GPU kernel map: row counts must be in "
                         "[0, 2^31 - 1) and the offset count >= 0, got " +
                         std::to_string(n_in) + ", " + std::to_string(n_out) +
                         ", " + std::to_string(K));
  }
  return Status::Ok();
}

// Dispatches a kernel templated on the coordinate width.
#define SPARSE_OPS_DISPATCH_DIMS(dims, KERNEL, grid, block, stream, ...) \
  do {                                                                   \
    switch (dims) {                                                      \
      case 2:                                                            \
        KERNEL<2><<<grid, block, 0, stream>>>(__VA_ARGS__);              \
        break;                                                           \
      case 3:                                                            \
        KERNEL<3><<<grid, block, 0, stream>>>(__VA_ARGS__);              \
        break;                                                           \
      case 4:                                                            \
        KERNEL<4><<<grid, block, 0, stream>>>(__VA_ARGS__);              \
        break;                                                           \
      case 5:                                                            \
        KERNEL<5><<<grid, block, 0, stream>>>(__VA_ARGS__);              \
        break;                                                           \
      default:                                                           \
        KERNEL<0><<<grid, block, 0, stream>>>(__VA_ARGS__);              \
    }                                                                    \
  } while (0)

// --- Kernel map checks and transposition ----------------------------------------------

__global__ void CheckSplitsKernel(const int64_t* __restrict__ splits,
                                  int64_t K, int64_t P,
                                  KernelMapCheck* check) {
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
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x +
                   threadIdx.x;
       p < P; p += step) {
    const int64_t i = in_rows[p], o = out_rows[p];
    bool bad = i < 0 || i >= n_in || o < 0 || o >= n_out;
    if (!bad && p > 0) {
      const int64_t k = OffsetOf(splits, K, p);
      if (p > splits[k] && out_rows[p - 1] >= o) bad = true;
    }
    if (bad) {
      atomicMin(reinterpret_cast<ull*>(&check->bad_pair),
                static_cast<ull>(p));
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
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x +
                   threadIdx.x;
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
                                const int32_t* __restrict__ in_rows, int64_t K, int64_t P,
                                int64_t n_in, unsigned int* first) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       p < P; p += step) {
    const int64_t k = OffsetOf(splits, K, p);
    const int32_t i = in_rows[p];
    if (i >= 0 && i < n_in) atomicMin(&first[k * n_in + i], static_cast<unsigned int>(p));
  }
}

__global__ void RepeatedPairKernel(const int64_t* __restrict__ splits,
                                   const int32_t* __restrict__ in_rows, int64_t K,
                                   int64_t P, int64_t n_in,
                                   const unsigned int* __restrict__ first,
                                   KernelMapCheck* check) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       p < P; p += step) {
    const int64_t k = OffsetOf(splits, K, p);
    const int32_t i = in_rows[p];
    if (i >= 0 && i < n_in && first[k * n_in + i] < static_cast<unsigned int>(p)) {
      atomicMin(reinterpret_cast<ull*>(&check->repeated_pair), static_cast<ull>(p));
    }
  }
}

__global__ void RepeatedRowKernel(const int32_t* __restrict__ in_rows,
                                  KernelMapCheck* check) {
  if (check->repeated_pair != kNone) check->repeated_row = in_rows[check->repeated_pair];
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

// --- Convolution ---------------------------------------------------------------------

template <typename T>
struct ConvConfig;
// f32 tile: BM output rows, fragments of TM x TN per thread; overridable
// for tuning experiments.
#ifndef SPARSE_OPS_GPU_F32_BM
#define SPARSE_OPS_GPU_F32_BM 128
#endif
#ifndef SPARSE_OPS_GPU_F32_TN
#define SPARSE_OPS_GPU_F32_TN 4
#endif
template <>
struct ConvConfig<float> {
  static constexpr int BM = SPARSE_OPS_GPU_F32_BM, BN = 64, BK = 32, TM = 8,
                       TN = SPARSE_OPS_GPU_F32_TN, PAD = 4;
  static constexpr int kThreads = (BM / TM) * (BN / TN);
  static constexpr int kMinBlocks = kThreads >= 256 ? 2 : 3;
};
template <>
struct ConvConfig<double> {
  static constexpr int BM = 64, BN = 64, BK = 32, TM = 4, TN = 4, PAD = 2;
  static constexpr int kThreads = (BM / TM) * (BN / TN);
  static constexpr int kMinBlocks = 2;
};

template <typename T>
constexpr size_t ConvSharedBytes() {
  using C = ConvConfig<T>;
  return sizeof(T) * (C::BM * C::BN + C::BK * (C::BM + C::PAD) +
                      C::BK * C::BN) +
         4 * C::BM * sizeof(int32_t);
}

// 16-byte shared-memory loads of a register fragment.
template <int N>
__device__ __forceinline__ void LoadFragment(const float* p, float (&r)[N]) {
  static_assert(N % 4 == 0, "float fragments are whole float4s");
#pragma unroll
  for (int i = 0; i < N / 4; ++i) {
    const float4 v = reinterpret_cast<const float4*>(p)[i];
    r[4 * i] = v.x;
    r[4 * i + 1] = v.y;
    r[4 * i + 2] = v.z;
    r[4 * i + 3] = v.w;
  }
}
template <int N>
__device__ __forceinline__ void LoadFragment(const double* p,
                                             double (&r)[N]) {
  static_assert(N % 2 == 0, "double fragments are whole double2s");
#pragma unroll
  for (int i = 0; i < N / 2; ++i) {
    const double2 v = reinterpret_cast<const double2*>(p)[i];
    r[2 * i] = v.x;
    r[2 * i + 1] = v.y;
  }
}

// 16 bytes of T, for vector loads of whole channel groups.
template <typename T>
struct alignas(16) Vec16 {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};

// tiles[k * (num_tiles + 1) + t] = the first pair of offset k whose output
// row is >= t * BM (t = num_tiles: the offset's end).
__global__ void TilePointersKernel(const int64_t* __restrict__ splits,
                                   const int32_t* __restrict__ out_rows,
                                   int64_t K, int64_t P, int64_t num_tiles,
                                   int64_t rows_per_tile, int64_t* tiles) {
  const int64_t n = K * (num_tiles + 1);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x +
                     threadIdx.x;
       idx < n; idx += step) {
    const int64_t k = idx / (num_tiles + 1), t = idx - k * (num_tiles + 1);
    // Clamped, so that a malformed map cannot send a reader out of bounds.
    const int64_t b = min(max(splits[k], int64_t{0}), P);
    const int64_t e = min(max(splits[k + 1], b), P);
    int64_t lo = e, hi = e;
    if (t < num_tiles) {
      lo = b;
      const int64_t row = t * rows_per_tile;
      while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (out_rows[mid] < row) {
          lo = mid + 1;
        } else {
          hi = mid;
        }
      }
    }
    tiles[idx] = lo;
  }
}

template <typename T>
__global__ void TransposeWeightsKernel(const T* __restrict__ w, int64_t K,
                                       int64_t a, int64_t b, T* out) {
  // w [K, a, b] -> out [K, b, a]
  const int64_t n = K * a * b;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x +
                     threadIdx.x;
       idx < n; idx += step) {
    const int64_t k = idx / (a * b), r = idx - k * (a * b);
    const int64_t j = r / a, i = r - j * a;  // out[k][j][i]
    out[idx] = w[(k * a + i) * b + j];
  }
}

// Software pipeline over steps (offset, BK-channel chunk). The row indices
// of offset i + 1 sit in shared memory (loaded during offset i - 1), so the
// gathered rows and the W_k chunk of step s + 1 are loaded into registers
// while step s computes, with no dependent global load in front of the
// arithmetic. Offsets without pairs in this tile are skipped.
// kVec: c_in and c_out are multiples of 16 bytes' worth of T and the
// operands 16-byte aligned: whole channel groups move with 16-byte loads.
template <typename T, bool kVec>
__global__ void __launch_bounds__(ConvConfig<T>::kThreads,
                                  ConvConfig<T>::kMinBlocks)
    ConvKernel(const T* __restrict__ in, int64_t n_in, int c_in,
               const T* __restrict__ w, int c_out,
               const int64_t* __restrict__ tiles,
               const int32_t* __restrict__ in_rows,
               const int32_t* __restrict__ out_rows, int64_t K,
               int64_t n_out, int64_t num_tiles, T* __restrict__ out) {
  using C = ConvConfig<T>;
  constexpr int BM = C::BM, BN = C::BN, BK = C::BK, TM = C::TM, TN = C::TN;
  constexpr int LDA = BM + C::PAD;
  constexpr int kThreads = C::kThreads;  // one TM x TN fragment a thread
  static_assert(kThreads % BK == 0 && kThreads % BN == 0 && BM <= kThreads,
                "load mapping");
  constexpr int kARowStep = kThreads / BK;  // gathered rows per pass
  constexpr int kAPer = BM / kARowStep;     // A elements per thread
  constexpr int kBRowStep = kThreads / BN;  // weight rows per pass
  constexpr int kBPer = BK / kBRowStep;     // B elements per thread
  // The same with 16-byte vectors of V channels.
  using V16 = Vec16<T>;
  constexpr int V = V16::N;
  constexpr int kALanes = BK / V, kBLanes = BN / V;
  constexpr int kAVRowStep = kThreads / kALanes, kAVPer = BM / kAVRowStep;
  constexpr int kBVRowStep = kThreads / kBLanes, kBVPer = BK / kBVRowStep;
  static_assert(kAVPer * V == kAPer && kBVPer * V == kBPer,
                "vector and scalar paths hold the same registers");
  extern __shared__ __align__(16) unsigned char smem[];
  T* acc = reinterpret_cast<T*>(smem);  // [BM][BN]
  T* as = acc + BM * BN;                // [BK][LDA], gathered rows, transposed
  T* bs = as + BK * LDA;                // [BK][BN], W_k chunk
  int32_t* rin = reinterpret_cast<int32_t*>(bs + BK * BN);  // [2][BM]
  int32_t* rout = rin + 2 * BM;                             // [2][BM]

  const int tid = threadIdx.x;
  const int tx = tid % (BN / TN), ty = tid / (BN / TN);
  const int a_kk = tid % BK, a_j0 = tid / BK;
  const int b_n = tid % BN, b_kk0 = tid / BN;
  const int av_q = tid % kALanes, av_j0 = tid / kALanes;
  const int bv_q = tid % kBLanes, bv_kk0 = tid / kBLanes;
  const int64_t t = blockIdx.x;
  const int64_t o0 = t * BM;
  const int n0 = blockIdx.y * BN;
  for (int idx = tid; idx < BM * BN; idx += kThreads) acc[idx] = T(0);

  struct Offset {
    int64_t k, p0;
    int m;
    bool ok;
  };
  // The next offset >= from with pairs in this tile (the same for every
  // thread of the block).
  auto find = [&](int64_t from) {
    for (int64_t k = from; k < K; ++k) {
      const int64_t b = tiles[k * (num_tiles + 1) + t];
      const int64_t count = tiles[k * (num_tiles + 1) + t + 1] - b;
      if (count > 0) {
        return Offset{k, b, static_cast<int>(min(count, int64_t{BM})), true};
      }
    }
    return Offset{K, 0, 0, false};
  };
  // Row indices of an offset into registers (thread j: pair j).
  int32_t ir = -1, orow = -1;
  auto fetch_rows = [&](const Offset& o) {
    ir = -1;
    orow = -1;
    if (o.ok && tid < o.m) {
      const int32_t i = in_rows[o.p0 + tid];
      ir = (i >= 0 && i < n_in) ? i : -1;
      const int64_t r = static_cast<int64_t>(out_rows[o.p0 + tid]) - o0;
      orow = (r >= 0 && r < BM) ? static_cast<int32_t>(r) : -1;
    }
  };
  // One step's operands into registers; row indices from shared memory.
  T ra[kAPer], rb[kBPer];
  auto fetch_data = [&](int64_t k, int c0, int m, const int32_t* rows) {
    if constexpr (kVec) {
      const int c = c0 + av_q * V;
#pragma unroll
      for (int r = 0; r < kAVPer; ++r) {
        const int j = av_j0 + r * kAVRowStep;
        const int32_t i = j < m ? rows[j] : -1;
        V16 v;
        if (i >= 0 && c < c_in) {
          v = *reinterpret_cast<const V16*>(
              in + static_cast<int64_t>(i) * c_in + c);
        } else {
#pragma unroll
          for (int e = 0; e < V; ++e) v.v[e] = T(0);
        }
#pragma unroll
        for (int e = 0; e < V; ++e) ra[r * V + e] = v.v[e];
      }
      const int col = n0 + bv_q * V;
#pragma unroll
      for (int r = 0; r < kBVPer; ++r) {
        const int cc = c0 + bv_kk0 + r * kBVRowStep;
        V16 v;
        if (cc < c_in && col < c_out) {
          v = *reinterpret_cast<const V16*>(
              w + (k * c_in + cc) * static_cast<int64_t>(c_out) + col);
        } else {
#pragma unroll
          for (int e = 0; e < V; ++e) v.v[e] = T(0);
        }
#pragma unroll
        for (int e = 0; e < V; ++e) rb[r * V + e] = v.v[e];
      }
      return;
    }
    const int c = c0 + a_kk;
#pragma unroll
    for (int r = 0; r < kAPer; ++r) {
      const int j = a_j0 + r * kARowStep;
      const int32_t i = j < m ? rows[j] : -1;
      ra[r] = (i >= 0 && c < c_in) ? in[static_cast<int64_t>(i) * c_in + c]
                                   : T(0);
    }
    const int col = n0 + b_n;
#pragma unroll
    for (int r = 0; r < kBPer; ++r) {
      const int cc = c0 + b_kk0 + r * kBRowStep;
      rb[r] = (cc < c_in && col < c_out)
                  ? w[(k * c_in + cc) * static_cast<int64_t>(c_out) + col]
                  : T(0);
    }
  };

  Offset cur = find(0), nxt{K, 0, 0, false};
  if (cur.ok) {
    fetch_rows(cur);
    if (tid < BM) {
      rin[tid] = ir;
      rout[tid] = orow;
    }
    nxt = find(cur.k + 1);
    fetch_rows(nxt);  // stored at cur's first step
  }
  __syncthreads();
  if (cur.ok) fetch_data(cur.k, 0, cur.m, rin);
  int buf = 0;
  T prod[TM][TN];
  while (cur.ok) {
    Offset after{K, 0, 0, false};
    for (int c0 = 0; c0 < c_in; c0 += BK) {
      __syncthreads();  // the previous step is done with as / bs / rows
      if constexpr (kVec) {
#pragma unroll
        for (int r = 0; r < kAVPer; ++r) {
          const int j = av_j0 + r * kAVRowStep;
          if (j < cur.m) {
#pragma unroll
            for (int e = 0; e < V; ++e) as[(av_q * V + e) * LDA + j] = ra[r * V + e];
          }
        }
#pragma unroll
        for (int r = 0; r < kBVPer; ++r) {
          V16 v;
#pragma unroll
          for (int e = 0; e < V; ++e) v.v[e] = rb[r * V + e];
          *reinterpret_cast<V16*>(bs + (bv_kk0 + r * kBVRowStep) * BN +
                                  bv_q * V) = v;
        }
      } else {
#pragma unroll
        for (int r = 0; r < kAPer; ++r) {
          const int j = a_j0 + r * kARowStep;
          if (j < cur.m) as[a_kk * LDA + j] = ra[r];
        }
#pragma unroll
        for (int r = 0; r < kBPer; ++r) bs[(b_kk0 + r * kBRowStep) * BN + b_n] = rb[r];
      }
      if (c0 == 0 && tid < BM) {  // next offset's rows: the other buffer
        rin[(buf ^ 1) * BM + tid] = ir;
        rout[(buf ^ 1) * BM + tid] = orow;
      }
      __syncthreads();
      // Prefetch the next step.
      if (c0 + BK < c_in) {
        fetch_data(cur.k, c0 + BK, cur.m, rin + buf * BM);
      } else if (nxt.ok) {
        fetch_data(nxt.k, 0, nxt.m, rin + (buf ^ 1) * BM);
      }
      if (c0 == 0) {
#pragma unroll
        for (int i = 0; i < TM; ++i) {
#pragma unroll
          for (int j = 0; j < TN; ++j) prod[i][j] = T(0);
        }
      }
      const bool active = ty * TM < cur.m;
      if (active) {
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
          T a[TM], b[TN];
          LoadFragment<TM>(as + kk * LDA + ty * TM, a);
          LoadFragment<TN>(bs + kk * BN + tx * TN, b);
#pragma unroll
          for (int i = 0; i < TM; ++i) {
#pragma unroll
            for (int j = 0; j < TN; ++j) prod[i][j] = fma(a[i], b[j], prod[i][j]);
          }
        }
        if (c0 + BK >= c_in) {  // the offset's last chunk: add to the tile
#pragma unroll
          for (int i = 0; i < TM; ++i) {
            const int r = ty * TM + i;
            if (r < cur.m) {
              const int lr = rout[buf * BM + r];
              if (lr >= 0) {
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[lr * BN + tx * TN + j] += prod[i][j];
              }
            }
          }
        }
      }
      if (c0 == 0) {  // rows of the offset after next, stored at nxt's start
        after = nxt.ok ? find(nxt.k + 1) : Offset{K, 0, 0, false};
        fetch_rows(after);
      }
    }
    cur = nxt;
    nxt = after;
    buf ^= 1;
  }
  __syncthreads();
  for (int idx = tid; idx < BM * BN; idx += kThreads) {
    const int r = idx / BN, n = idx % BN;
    const int64_t o = o0 + r;
    const int col = n0 + n;
    if (o < n_out && col < c_out) out[o * c_out + col] = acc[idx];
  }
}

struct ConvBuffers {
  int64_t* tiles;
  void* weights_t;  // [K, c_in, c_out] transposed copy, when asked for
  int64_t num_tiles;
};

template <typename T>
ConvBuffers CarveConv(Carver* c, int64_t K, int64_t n_out, int64_t c_in,
                      int64_t c_out, bool transpose_weights) {
  ConvBuffers b;
  b.num_tiles = CeilDiv(n_out, ConvConfig<T>::BM);
  b.tiles = c->Take<int64_t>(K * (b.num_tiles + 1));
  b.weights_t =
      transpose_weights ? c->Take<T>(K * c_in * c_out) : nullptr;
  return b;
}

Status CheckChannels(int64_t c_in, int64_t c_out) {
  if (c_in < 0 || c_out < 0 || c_in > (1 << 24) || c_out > (1 << 24)) {
    return Status::Error("sparse_ops GPU convolution: channel counts must be "
                         "in [0, 2^24], got " + std::to_string(c_in) +
                         " and " + std::to_string(c_out));
  }
  return Status::Ok();
}

template <typename T>
Status LaunchConv(const T* in, int64_t n_in, int64_t c_in, const T* weights,
                  int64_t c_out, bool transpose_weights,
                  const DeviceKernelMap& map, int64_t n_out, T* out,
                  const ConvBuffers& b, cudaStream_t stream) {
  const int64_t K = map.num_offsets;
  if (n_out == 0 || c_out == 0) return Status::Ok();
  if (c_in == 0 || K == 0) {  // nothing to add: zeros
    cudaMemsetAsync(out, 0, n_out * c_out * sizeof(T), stream);
    return LaunchStatus("Conv");
  }
  const T* w = weights;
  if (transpose_weights && K * c_in * c_out > 0) {
    T* wt = static_cast<T*>(b.weights_t);
    TransposeWeightsKernel<T><<<GridFor(K * c_in * c_out), kThreads, 0,
                                stream>>>(weights, K, c_out, c_in, wt);
    w = wt;
  }
  TilePointersKernel<<<GridFor(K * (b.num_tiles + 1)), kThreads, 0,
                       stream>>>(map.splits, map.out_rows, K, map.num_pairs,
                                 b.num_tiles, ConvConfig<T>::BM, b.tiles);
  constexpr size_t smem = ConvSharedBytes<T>();
  constexpr int V = Vec16<T>::N;
  const bool vec = c_in % V == 0 && c_out % V == 0 &&
                   reinterpret_cast<uintptr_t>(in) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(w) % 16 == 0;
  auto kernel = vec ? ConvKernel<T, true> : ConvKernel<T, false>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                       static_cast<int>(smem));
  const dim3 grid(static_cast<unsigned>(b.num_tiles),
                  static_cast<unsigned>(CeilDiv(c_out, ConvConfig<T>::BN)));
  kernel<<<grid, ConvConfig<T>::kThreads, smem, stream>>>(
      in, n_in, static_cast<int>(c_in), w, static_cast<int>(c_out), b.tiles,
      map.in_rows, map.out_rows, K, n_out, b.num_tiles, out);
  return LaunchStatus("Conv");
}

// --- Weight gradient -----------------------------------------------------------------

constexpr int kGradBC = 64, kGradBN = 64, kGradBP = 32, kGradTM = 4,
              kGradTN = 4;
constexpr int64_t kTargetSegments = 1024;
constexpr int64_t kMinSegment = 512;

// Pairs per segment: a function of P alone (deterministic whatever the GPU).
int64_t SegmentSize(int64_t P) {
  const int64_t s = CeilDiv(std::max<int64_t>(P, 1), kTargetSegments);
  return std::max(kMinSegment, CeilDiv(s, kGradBP) * kGradBP);
}
int64_t MaxSegments(int64_t P, int64_t K) {
  return CeilDiv(P, SegmentSize(P)) + K;
}

// One thread: first[k] = the first segment of offset k (first[K] = total),
// capped at max_segments so that a malformed map stays in bounds.
__global__ void SegmentPlanKernel(const int64_t* __restrict__ splits,
                                  int64_t K, int64_t segment,
                                  int64_t max_segments, int64_t* first) {
  int64_t s = 0;
  first[0] = 0;
  for (int64_t k = 0; k < K; ++k) {
    const int64_t n = max(int64_t{0}, splits[k + 1] - splits[k]);
    s = min(max_segments, s + (n + segment - 1) / segment);
    first[k + 1] = s;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    WeightGradPartialKernel(const T* __restrict__ in, int64_t n_in, int c_in,
                            const T* __restrict__ grad, int64_t n_out,
                            int c_out, const int64_t* __restrict__ splits,
                            const int32_t* __restrict__ in_rows,
                            const int32_t* __restrict__ out_rows, int64_t K,
                            int64_t P, const int64_t* __restrict__ first,
                            int64_t segment, T* __restrict__ partial) {
  static_assert(kGradBC == kGradBN && kThreads % kGradBC == 0, "mapping");
  constexpr int kRowStep = kThreads / kGradBC;  // pairs per load pass
  constexpr int kPer = kGradBP / kRowStep;      // elements per thread
  __shared__ __align__(16) T xs[kGradBP * kGradBC];
  __shared__ __align__(16) T gs[kGradBP * kGradBN];
  const int64_t s = blockIdx.x;
  if (s >= first[K]) return;
  int64_t lo = 0, hi = K;  // the offset: largest k with first[k] <= s
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (first[mid] <= s) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  const int64_t k = lo;
  const int64_t begin = min(max(splits[k], int64_t{0}), P);
  const int64_t end = min(max(splits[k + 1], begin), P);
  const int64_t p_begin = min(end, begin + (s - first[k]) * segment);
  const int64_t p_end = min(end, p_begin + segment);
  const int tid = threadIdx.x;
  const int tx = tid % (kGradBN / kGradTN), ty = tid / (kGradBN / kGradTN);
  const int l_c = tid % kGradBC, l_pp0 = tid / kGradBC;
  const int c0 = blockIdx.y * kGradBC, n0 = blockIdx.z * kGradBN;
  // Pipeline over chunks of kGradBP pairs: the row indices of chunk c + 1
  // are in shared memory (buffer (c + 1) & 1) before its operands are
  // loaded into registers during chunk c's arithmetic.
  __shared__ int32_t ri[2][kGradBP], ro[2][kGradBP];
  int32_t reg_i = -1, reg_o = -1;
  auto fetch_rows = [&](int64_t p) {
    reg_i = -1;
    reg_o = -1;
    if (tid < kGradBP && p + tid < p_end) {
      const int32_t i = in_rows[p + tid], o = out_rows[p + tid];
      reg_i = (i >= 0 && i < n_in) ? i : -1;
      reg_o = (o >= 0 && o < n_out) ? o : -1;
    }
  };
  T rx[kPer], rg[kPer];
  auto fetch_data = [&](const int32_t* rows_i, const int32_t* rows_o) {
    const int c = c0 + l_c, n = n0 + l_c;
#pragma unroll
    for (int r = 0; r < kPer; ++r) {
      const int pp = l_pp0 + r * kRowStep;
      const int32_t i = rows_i[pp], o = rows_o[pp];
      rx[r] = (i >= 0 && c < c_in) ? in[static_cast<int64_t>(i) * c_in + c]
                                   : T(0);
      rg[r] = (o >= 0 && n < c_out) ? grad[static_cast<int64_t>(o) * c_out + n]
                                    : T(0);
    }
  };
  T acc[kGradTM][kGradTN];
#pragma unroll
  for (int i = 0; i < kGradTM; ++i) {
#pragma unroll
    for (int j = 0; j < kGradTN; ++j) acc[i][j] = T(0);
  }
  if (p_begin < p_end) {
    fetch_rows(p_begin);
    if (tid < kGradBP) {
      ri[0][tid] = reg_i;
      ro[0][tid] = reg_o;
    }
    fetch_rows(p_begin + kGradBP);
  }
  __syncthreads();
  if (p_begin < p_end) fetch_data(ri[0], ro[0]);
  int buf = 0;
  for (int64_t p = p_begin; p < p_end; p += kGradBP) {
    __syncthreads();  // the previous chunk consumed
#pragma unroll
    for (int r = 0; r < kPer; ++r) {
      const int pp = l_pp0 + r * kRowStep;
      xs[pp * kGradBC + l_c] = rx[r];
      gs[pp * kGradBN + l_c] = rg[r];
    }
    if (tid < kGradBP) {
      ri[buf ^ 1][tid] = reg_i;
      ro[buf ^ 1][tid] = reg_o;
    }
    __syncthreads();
    if (p + kGradBP < p_end) fetch_data(ri[buf ^ 1], ro[buf ^ 1]);
    fetch_rows(p + 2 * kGradBP);
#pragma unroll 8
    for (int pp = 0; pp < kGradBP; ++pp) {
      T a[kGradTM], b[kGradTN];
      LoadFragment<kGradTM>(xs + pp * kGradBC + ty * kGradTM, a);
      LoadFragment<kGradTN>(gs + pp * kGradBN + tx * kGradTN, b);
#pragma unroll
      for (int i = 0; i < kGradTM; ++i) {
#pragma unroll
        for (int j = 0; j < kGradTN; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
      }
    }
    buf ^= 1;
  }
  T* dst = partial + s * static_cast<int64_t>(c_in) * c_out;
#pragma unroll
  for (int i = 0; i < kGradTM; ++i) {
    const int c = c0 + ty * kGradTM + i;
    if (c >= c_in) continue;
#pragma unroll
    for (int j = 0; j < kGradTN; ++j) {
      const int n = n0 + tx * kGradTN + j;
      if (n < c_out) dst[static_cast<int64_t>(c) * c_out + n] = acc[i][j];
    }
  }
}

template <typename T>
__global__ void WeightGradReduceKernel(const T* __restrict__ partial,
                                       const int64_t* __restrict__ first,
                                       int64_t K, int64_t size,
                                       T* __restrict__ grad_weights) {
  const int64_t n = K * size;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x +
                     threadIdx.x;
       idx < n; idx += step) {
    const int64_t k = idx / size, e = idx - k * size;
    T sum = T(0);
    for (int64_t s = first[k]; s < first[k + 1]; ++s) sum += partial[s * size + e];
    grad_weights[idx] = sum;
  }
}

struct GradBuffers {
  int64_t* first;
  void* partial;
  int64_t segment;
  int64_t max_segments;
};

template <typename T>
GradBuffers CarveGrad(Carver* c, int64_t K, int64_t P, int64_t c_in,
                      int64_t c_out) {
  GradBuffers b;
  b.segment = SegmentSize(P);
  b.max_segments = MaxSegments(P, K);
  b.first = c->Take<int64_t>(K + 1);
  b.partial = c->Take<T>(b.max_segments * c_in * c_out);
  return b;
}

}  // namespace

// --- Host entry points ---------------------------------------------------------------

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
  if (info.error == kMapKeyTooWide) {
    std::string widths;
    for (int a = 0; a < info.layout.dims; ++a) {
      widths += (a ? ", " : "") + std::to_string(info.layout.bits[a]);
    }
    return Status::Error(
        "coordinates span too large a range to pack into a 64-bit key: the "
        "axes (batch first) need " + widths + " bits, " +
        std::to_string(info.layout.total_bits) + " in total, more than " +
        std::to_string(kMaxKeyBits) +
        ". Use a larger voxel size, fewer dimensions, or coordinates that "
        "span a smaller range.");
  }
  if (info.error == kMapDuplicate) {
    const uint64_t a = info.duplicate & 0xffffffffull;
    const uint64_t b = info.duplicate >> 32;
    std::string site;
    for (int d = 0; d < info.layout.dims; ++d) {
      site += (d ? ", " : "") + std::to_string(info.duplicate_site[d]);
    }
    return Status::Error(
        "coordinates has duplicate sites: rows " + std::to_string(a) +
        " and " + std::to_string(b) + " are both [" + site +
        "]; merge duplicates first, e.g. with "
        "sparse_ops.utils.sparse_quantize");
  }
  if (info.error != kMapOk) {
    return Status::Error("sparse_ops GPU kernel map: unknown error " +
                         std::to_string(info.error));
  }
  return Status::Ok();
}

Status CopyToHost(void* host, const void* device, size_t bytes, GpuStream stream) {
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
    BoundsKernel<<<GridFor(n_in, 1024), kThreads, 0, stream>>>(in_coords,
                                                               n_in, dims,
                                                               info);
  }
  if (!same_coordinates && n_out > 0) {
    NegativeBatchKernel<<<GridFor(n_out, 1024), kThreads, 0, stream>>>(
        out_coords, n_out, dims, &info->negative_out_row);
  }
  LayoutKernel<<<1, 1, 0, stream>>>(info, dims, geometry.offsets, K,
                                    same_coordinates);
  TableInitKernel<<<GridFor(b.capacity), kThreads, 0, stream>>>(
      b.keys, b.rows, b.capacity);
  if (n_in > 0) {
    const int grid = static_cast<int>(CeilDiv(n_in, kThreads));
    SPARSE_OPS_DISPATCH_DIMS(dims, InsertKernel, grid, kThreads, stream,
                             in_coords, n_in, dims, info, b.keys, b.rows,
                             mask);
    SPARSE_OPS_DISPATCH_DIMS(dims, DuplicateKernel, grid, kThreads, stream,
                             in_coords, n_in, dims, info, b.keys, b.rows,
                             mask);
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
  FinishInfoKernel<<<1, 1, 0, stream>>>(info, in_coords,
                                        same_coordinates ? in_coords
                                                         : out_coords,
                                        dims);
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

Status PackKeys(const int32_t* coords, int64_t n, int dims,
                const KernelMapInfo* info, uint64_t* keys, GpuStream stream) {
  if (n <= 0) return Status::Ok();
  if (dims < 1 || dims > kMaxDims) {
    return Status::Error("PackKeys: dims must be in [1, 32]");
  }
  const int grid = static_cast<int>(CeilDiv(n, kThreads));
  SPARSE_OPS_DISPATCH_DIMS(dims, PackKeysKernel, grid, kThreads, stream,
                           coords, n, dims, info, keys);
  return LaunchStatus("PackKeys");
}

Status CheckKernelMap(const DeviceKernelMap& map, int64_t n_in, int64_t n_out,
                      KernelMapCheck* check, GpuStream stream) {
  CheckSplitsKernel<<<1, 1, 0, stream>>>(map.splits, map.num_offsets,
                                         map.num_pairs, check);
  if (map.num_pairs > 0) {
    CheckPairsKernel<<<GridFor(map.num_pairs), kThreads, 0, stream>>>(
        map.splits, map.in_rows, map.out_rows, map.num_offsets,
        map.num_pairs, n_in, n_out, check);
    CheckFinishKernel<<<1, 1, 0, stream>>>(map.in_rows, map.out_rows, check);
  }
  return LaunchStatus("CheckKernelMap");
}

Status KernelMapCheckStatus(const KernelMapCheck& check, int64_t num_pairs,
                            int64_t n_in, int64_t n_out) {
  if (check.bad_splits == 1) {
    return Status::Error("kernel map offset_splits must start at 0 and end at "
                         "the number of pairs " + std::to_string(num_pairs));
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
    return Status::Error("kernel map pair " + std::to_string(check.repeated_pair) +
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
    RepeatedPairKernel<<<grid, kThreads, 0, stream>>>(map.splits, map.in_rows, K,
                                                      map.num_pairs, n_in, first, check);
    RepeatedRowKernel<<<1, 1, 0, stream>>>(map.in_rows, check);
  }
  cudaMemsetAsync(b.table, 0xff, E * sizeof(int32_t), stream);
  if (map.num_pairs > 0) {
    TransposeScatterKernel<<<GridFor(map.num_pairs, 8192), kThreads, 0,
                             stream>>>(map.splits, map.in_rows, map.out_rows,
                                       K, map.num_pairs, n_in, b.table);
  }
  LaunchCountScan(b.table, E, b.compaction, nullptr, stream);
  LaunchFill(b.table, E, n_in, b.compaction, K, nullptr, t_in_rows,
             t_out_rows, stream);
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

template <typename T>
size_t ConvWorkspaceBytes(int64_t num_offsets, int64_t n_out, int64_t c_in,
                          int64_t c_out, bool transpose_weights) {
  Carver c(nullptr);
  CarveConv<T>(&c, num_offsets, n_out, c_in, c_out, transpose_weights);
  return c.used();
}

template <typename T>
Status Conv(const T* in, int64_t n_in, int64_t c_in, const T* weights,
            int64_t c_out, bool transpose_weights, const DeviceKernelMap& map,
            int64_t n_out, T* out, void* workspace, size_t workspace_bytes,
            GpuStream stream) {
  Status status = CheckChannels(c_in, c_out);
  if (!status.ok()) return status;
  Carver c(workspace);
  const ConvBuffers b = CarveConv<T>(&c, map.num_offsets, n_out, c_in, c_out,
                                     transpose_weights);
  status = CheckWorkspace(workspace_bytes, c.used(), "Conv");
  if (!status.ok()) return status;
  return LaunchConv<T>(in, n_in, c_in, weights, c_out, transpose_weights, map,
                       n_out, out, b, stream);
}

template <typename T>
size_t ConvBackpropInputWorkspaceBytes(int64_t num_offsets, int64_t num_pairs,
                                       int64_t n_in, int64_t c_in,
                                       int64_t c_out) {
  Carver c(nullptr);
  c.Take<int32_t>(num_pairs);
  c.Take<int32_t>(num_pairs);
  CarveTranspose(&c, n_in, num_offsets);
  CarveConv<T>(&c, num_offsets, n_in, c_out, c_in, true);
  return c.used();
}

template <typename T>
Status ConvBackpropInput(const T* grad_out, int64_t n_out, int64_t c_out,
                         const T* weights, int64_t c_in,
                         const DeviceKernelMap& map, int64_t n_in, T* grad_in,
                         void* workspace, size_t workspace_bytes,
                         GpuStream stream, KernelMapCheck* check) {
  Status status = CheckChannels(c_in, c_out);
  if (!status.ok()) return status;
  const int64_t K = map.num_offsets, P = map.num_pairs;
  Carver c(workspace);
  int32_t* t_in = c.Take<int32_t>(P);
  int32_t* t_out = c.Take<int32_t>(P);
  const TransposeBuffers tb = CarveTranspose(&c, n_in, K);
  const ConvBuffers cb = CarveConv<T>(&c, K, n_in, c_out, c_in, true);
  status = CheckWorkspace(workspace_bytes, c.used(), "ConvBackpropInput");
  if (!status.ok()) return status;
  if (n_in == 0 || c_in == 0) return Status::Ok();
  status = LaunchTranspose(map, n_in, t_in, t_out, tb, check, stream);
  if (!status.ok()) return status;
  const DeviceKernelMap transposed{map.splits, t_in, t_out, K, P};
  return LaunchConv<T>(grad_out, n_out, c_out, weights, c_in,
                       /*transpose_weights=*/true, transposed, n_in, grad_in,
                       cb, stream);
}

template <typename T>
size_t ConvBackpropKernelWorkspaceBytes(int64_t num_offsets,
                                        int64_t num_pairs, int64_t c_in,
                                        int64_t c_out) {
  Carver c(nullptr);
  CarveGrad<T>(&c, num_offsets, num_pairs, c_in, c_out);
  return c.used();
}

template <typename T>
Status ConvBackpropKernel(const T* in, int64_t n_in, int64_t c_in,
                          const T* grad_out, int64_t n_out, int64_t c_out,
                          const DeviceKernelMap& map, T* grad_weights,
                          void* workspace, size_t workspace_bytes,
                          GpuStream stream) {
  Status status = CheckChannels(c_in, c_out);
  if (!status.ok()) return status;
  const int64_t K = map.num_offsets, P = map.num_pairs;
  Carver c(workspace);
  const GradBuffers b = CarveGrad<T>(&c, K, P, c_in, c_out);
  status = CheckWorkspace(workspace_bytes, c.used(), "ConvBackpropKernel");
  if (!status.ok()) return status;
  const int64_t size = c_in * c_out;
  if (K == 0 || size == 0) return Status::Ok();
  T* partial = static_cast<T*>(b.partial);
  SegmentPlanKernel<<<1, 1, 0, stream>>>(map.splits, K, b.segment,
                                         b.max_segments, b.first);
  const dim3 grid(static_cast<unsigned>(b.max_segments),
                  static_cast<unsigned>(CeilDiv(c_in, kGradBC)),
                  static_cast<unsigned>(CeilDiv(c_out, kGradBN)));
  WeightGradPartialKernel<T><<<grid, kThreads, 0, stream>>>(
      in, n_in, static_cast<int>(c_in), grad_out, n_out,
      static_cast<int>(c_out), map.splits, map.in_rows, map.out_rows, K, P,
      b.first, b.segment, partial);
  WeightGradReduceKernel<T><<<GridFor(K * size, 8192), kThreads, 0, stream>>>(
      partial, b.first, K, size, grad_weights);
  return LaunchStatus("ConvBackpropKernel");
}

#define SPARSE_OPS_INSTANTIATE(T)                                              \
  template size_t ConvWorkspaceBytes<T>(int64_t, int64_t, int64_t, int64_t,    \
                                        bool);                                 \
  template Status Conv<T>(const T*, int64_t, int64_t, const T*, int64_t, bool, \
                          const DeviceKernelMap&, int64_t, T*, void*, size_t,  \
                          GpuStream);                                          \
  template size_t ConvBackpropInputWorkspaceBytes<T>(int64_t, int64_t,         \
                                                     int64_t, int64_t,         \
                                                     int64_t);                 \
  template Status ConvBackpropInput<T>(const T*, int64_t, int64_t, const T*,   \
                                       int64_t, const DeviceKernelMap&,        \
                                       int64_t, T*, void*, size_t, GpuStream,  \
                                       KernelMapCheck*); \
  template size_t ConvBackpropKernelWorkspaceBytes<T>(int64_t, int64_t,        \
                                                      int64_t, int64_t);       \
  template Status ConvBackpropKernel<T>(const T*, int64_t, int64_t, const T*,  \
                                        int64_t, int64_t,                      \
                                        const DeviceKernelMap&, T*, void*,     \
                                        size_t, GpuStream);
SPARSE_OPS_INSTANTIATE(float)
SPARSE_OPS_INSTANTIATE(double)
#undef SPARSE_OPS_INSTANTIATE

}  // namespace gpu
}  // namespace sparse_ops
