// CUDA pooling; see pool_gpu.h for the contracts. Every sum below is taken
// in the order the CPU core (kernels/core/pool.cc) takes it, so the results
// are the CPU's bit for bit, but for averaged unpooling: its terms are
// fused multiply-adds here, as g++ contracts them in the x86-64-v3 build
// (a CPU build without FMA rounds twice and differs in the last bit).
#include "kernels/cuda/pool_gpu.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cub/cub.cuh>
#include <string>

#include "kernels/cuda/launch.cu.h"

namespace sparse_ops {
namespace gpu {
namespace {

// Rows per partial result of the global pools (the CPU's kGlobalChunk).
constexpr int64_t kGlobalChunk = 2048;
// Radix sort bits for keys up to v (at least one: CUB leaves the output
// unwritten for an empty bit range).
inline int BitsToHold(uint64_t v) {
  int bits = 1;
  while (bits < 64 && (v >> bits) != 0) ++bits;
  return bits;
}

// The pair of offset k whose output row is o, or -1 (output rows increase
// within an offset; a malformed map is clamped, never read out of range).
__device__ __forceinline__ int64_t FindPair(
    const int64_t* __restrict__ splits, const int32_t* __restrict__ out_rows,
    int64_t P, int64_t k, int32_t o) {
  int64_t lo = min(max(splits[k], int64_t{0}), P);
  const int64_t end = min(max(splits[k + 1], lo), P);
  int64_t hi = end;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (out_rows[mid] < o) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return (lo < end && out_rows[lo] == o) ? lo : -1;
}

// One warp per output row, lanes over channels; grid-stride over rows.
#define SPARSE_OPS_FOR_WARP_ROWS(row, n)                                  \
  const int lane = threadIdx.x & 31;                                      \
  const int64_t first_warp =                                              \
      (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; \
  const int64_t num_warps =                                               \
      (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;                \
  for (int64_t row = first_warp; row < (n); row += num_warps)

int WarpGrid(int64_t rows) {
  return static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(CeilDiv(rows, kThreads / 32), 65535)));
}

template <typename T>
__global__ void MaxPoolKernel(const T* __restrict__ in, int64_t n_in, int64_t C,
                              const int64_t* __restrict__ splits,
                              const int32_t* __restrict__ in_rows,
                              const int32_t* __restrict__ out_rows, int64_t K,
                              int64_t P, int64_t n_out, T* __restrict__ out,
                              int32_t* __restrict__ argmax) {
  SPARSE_OPS_FOR_WARP_ROWS(o, n_out) {
    T* dst = out + o * C;
    int32_t* arg = argmax + o * C;
    for (int64_t c = lane; c < C; c += 32) {
      dst[c] = T(0);
      arg[c] = -1;
    }
    for (int64_t k = 0; k < K; ++k) {
      const int64_t p =
          FindPair(splits, out_rows, P, k, static_cast<int32_t>(o));
      if (p < 0) continue;
      const int32_t i = in_rows[p];
      if (i < 0 || i >= n_in) continue;
      const T* src = in + int64_t{i} * C;
      // Strict >: ties keep the earlier offset (and NaN never replaces).
      for (int64_t c = lane; c < C; c += 32) {
        const T v = src[c], cur = dst[c];
        const int32_t a = arg[c];
        const bool take = (a < 0) | (v > cur);
        dst[c] = take ? v : cur;
        arg[c] = take ? i : a;
      }
    }
  }
}

template <typename T>
__global__ void SumPoolKernel(const T* __restrict__ in, int64_t n_in, int64_t C,
                              const int64_t* __restrict__ splits,
                              const int32_t* __restrict__ in_rows,
                              const int32_t* __restrict__ out_rows, int64_t K,
                              int64_t P, int64_t n_out, bool average,
                              T* __restrict__ out) {
  SPARSE_OPS_FOR_WARP_ROWS(o, n_out) {
    T* dst = out + o * C;
    for (int64_t c = lane; c < C; c += 32) dst[c] = T(0);
    int32_t count = 0;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t p =
          FindPair(splits, out_rows, P, k, static_cast<int32_t>(o));
      if (p < 0) continue;
      const int32_t i = in_rows[p];
      if (i < 0 || i >= n_in) continue;
      ++count;
      const T* src = in + int64_t{i} * C;
      for (int64_t c = lane; c < C; c += 32) dst[c] = dst[c] + src[c];
    }
    if (average && count >= 2) {  // 0 stays 0, x / 1 == x
      const T n = static_cast<T>(count);
      for (int64_t c = lane; c < C; c += 32) dst[c] = dst[c] / n;
    }
  }
}

// inverse[o] = 1 / (pairs of o), 0 without pairs.
template <typename T>
__global__ void InverseCountKernel(const int64_t* __restrict__ splits,
                                   const int32_t* __restrict__ out_rows,
                                   int64_t K, int64_t P, int64_t n_out,
                                   T* __restrict__ inverse) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       o < n_out; o += step) {
    int32_t count = 0;
    for (int64_t k = 0; k < K; ++k) {
      count += FindPair(splits, out_rows, P, k, static_cast<int32_t>(o)) >= 0;
    }
    inverse[o] = count ? T(1) / static_cast<T>(count) : T(0);
  }
}

// Over the transposed map (t_out_rows: original input rows, sorted within
// an offset; t_in_rows: original output rows): out[i] += in[o] (* inverse[o]).
template <typename T>
__global__ void SumPoolTransposeKernel(
    const T* __restrict__ in, int64_t n_out, int64_t C,
    const int64_t* __restrict__ splits, const int32_t* __restrict__ t_in_rows,
    const int32_t* __restrict__ t_out_rows, int64_t K, int64_t P, int64_t n_in,
    const T* __restrict__ inverse, T* __restrict__ out) {
  SPARSE_OPS_FOR_WARP_ROWS(i, n_in) {
    T* dst = out + i * C;
    for (int64_t c = lane; c < C; c += 32) dst[c] = T(0);
    for (int64_t k = 0; k < K; ++k) {
      const int64_t p =
          FindPair(splits, t_out_rows, P, k, static_cast<int32_t>(i));
      if (p < 0) continue;
      const int32_t o = t_in_rows[p];
      if (o < 0 || o >= n_out) continue;
      const T* src = in + int64_t{o} * C;
      if (inverse != nullptr) {
        const T s = inverse[o];
        for (int64_t c = lane; c < C; c += 32) dst[c] = fma(src[c], s, dst[c]);
      } else {
        for (int64_t c = lane; c < C; c += 32) dst[c] = dst[c] + src[c];
      }
    }
  }
}

__global__ void InitCheckKernel(IndexCheck* check) {
  check->bad = kNone;
  check->value = 0;
  check->pad = 0;
}

__global__ void FinishCheckKernel(const int32_t* __restrict__ values,
                                  IndexCheck* check) {
  if (check->bad != kNone) check->value = values[check->bad];
}

__device__ __forceinline__ void ReportBad(IndexCheck* check, int64_t j) {
  atomicMin(reinterpret_cast<ull*>(&check->bad), static_cast<ull>(j));
}

// keys[j] = argmax[j] * C + c for j = o * C + c (sentinel n_in * C for -1
// and bad entries), rows[j] = o.
__global__ void ArgmaxKeysKernel(const int32_t* __restrict__ argmax, int64_t N,
                                 int64_t C, int64_t n_in,
                                 uint64_t* __restrict__ keys,
                                 int32_t* __restrict__ rows,
                                 IndexCheck* check) {
  const uint64_t sentinel = static_cast<uint64_t>(n_in) * C;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       j < N; j += step) {
    const int32_t a = argmax[j];
    uint64_t key = sentinel;
    if (a < -1 || a >= n_in) {
      ReportBad(check, j);
    } else if (a >= 0) {
      key = static_cast<uint64_t>(a) * C + static_cast<uint64_t>(j % C);
    }
    keys[j] = key;
    rows[j] = static_cast<int32_t>(j / C);
  }
}

// The first entry of each run of equal sorted keys sums the run in order
// (increasing output row: the sort is stable).
template <typename T>
__global__ void ArgmaxSumKernel(const uint64_t* __restrict__ keys,
                                const int32_t* __restrict__ rows, int64_t N,
                                int64_t C, uint64_t sentinel,
                                const T* __restrict__ grad_out,
                                T* __restrict__ grad_in) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       p < N; p += step) {
    const uint64_t key = keys[p];
    if (key >= sentinel || (p > 0 && keys[p - 1] == key)) continue;
    const int64_t c = static_cast<int64_t>(key % C);
    T acc = T(0);
    for (int64_t q = p; q < N && keys[q] == key; ++q) {
      acc = acc + grad_out[int64_t{rows[q]} * C + c];
    }
    grad_in[key] = acc;
  }
}

// keys[i] = batch[i] (num_batches for a bad entry), rows[i] = i; counts of
// each item (integer atomics: the totals do not depend on the order). With
// null outputs it only checks.
__global__ void BatchKeysKernel(const int32_t* __restrict__ batch, int64_t n,
                                int64_t num_batches,
                                uint32_t* __restrict__ keys,
                                int32_t* __restrict__ rows,
                                unsigned long long* __restrict__ counts,
                                IndexCheck* check) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < n; i += step) {
    const int32_t b = batch[i];
    const bool bad = b < 0 || b >= num_batches;
    if (bad) {
      ReportBad(check, i);
    } else if (counts != nullptr) {
      atomicAdd(&counts[b], 1ull);
    }
    if (keys != nullptr) {
      keys[i] =
          bad ? static_cast<uint32_t>(num_batches) : static_cast<uint32_t>(b);
      rows[i] = static_cast<int32_t>(i);
    }
  }
}

// chunks[b] = the item's chunks of kGlobalChunk rows (chunks[B] = 0).
__global__ void ChunkCountKernel(const unsigned long long* __restrict__ counts,
                                 int64_t num_batches,
                                 int64_t* __restrict__ chunks) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       b <= num_batches; b += step) {
    chunks[b] = b < num_batches
                    ? static_cast<int64_t>((counts[b] + kGlobalChunk - 1) /
                                           kGlobalChunk)
                    : 0;
  }
}

// Chunk j of item b: rows order[lo .. hi) (the CPU's ForChunks).
__device__ __forceinline__ bool ChunkRows(
    const int64_t* __restrict__ starts, const int64_t* __restrict__ chunk_first,
    int64_t num_batches, int64_t j, int64_t* b_out, int64_t* lo, int64_t* hi) {
  if (j >= chunk_first[num_batches]) return false;
  int64_t a = 0, z = num_batches;  // the last b with chunk_first[b] <= j
  while (z - a > 1) {
    const int64_t mid = (a + z) / 2;
    if (chunk_first[mid] <= j) {
      a = mid;
    } else {
      z = mid;
    }
  }
  *b_out = a;
  *lo = starts[a] + (j - chunk_first[a]) * kGlobalChunk;
  *hi = min(starts[a + 1], *lo + kGlobalChunk);
  return true;
}

template <typename T>
__global__ void GlobalChunkKernel(const T* __restrict__ in, int64_t C,
                                  const int32_t* __restrict__ order,
                                  const int64_t* __restrict__ starts,
                                  const int64_t* __restrict__ chunk_first,
                                  int64_t num_batches, int64_t max_chunks,
                                  bool is_max, T* __restrict__ partial,
                                  int32_t* __restrict__ partial_arg) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       t < max_chunks * C; t += step) {
    const int64_t j = t / C, c = t % C;
    int64_t b, lo, hi;
    if (!ChunkRows(starts, chunk_first, num_batches, j, &b, &lo, &hi)) continue;
    if (is_max) {
      int32_t arg = order[lo];
      T acc = in[int64_t{arg} * C + c];
      for (int64_t r = lo + 1; r < hi; ++r) {
        const int32_t i = order[r];
        const T v = in[int64_t{i} * C + c];
        const bool take = v > acc;  // ties keep the lowest row
        acc = take ? v : acc;
        arg = take ? i : arg;
      }
      partial[t] = acc;
      partial_arg[t] = arg;
    } else {
      T acc = T(0);
      for (int64_t r = lo; r < hi; ++r)
        acc = acc + in[int64_t{order[r]} * C + c];
      partial[t] = acc;
    }
  }
}

template <typename T>
__global__ void GlobalItemKernel(int64_t C, const int64_t* __restrict__ starts,
                                 const int64_t* __restrict__ chunk_first,
                                 int64_t num_batches, bool is_max, bool average,
                                 const T* __restrict__ partial,
                                 const int32_t* __restrict__ partial_arg,
                                 T* __restrict__ out,
                                 int32_t* __restrict__ argmax) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       t < num_batches * C; t += step) {
    const int64_t b = t / C, c = t % C;
    const int64_t j0 = chunk_first[b], j1 = chunk_first[b + 1];
    if (is_max) {
      if (j0 == j1) {
        out[t] = T(0);
        argmax[t] = -1;
        continue;
      }
      T acc = partial[j0 * C + c];
      int32_t arg = partial_arg[j0 * C + c];
      for (int64_t j = j0 + 1; j < j1; ++j) {
        const T v = partial[j * C + c];
        const bool take = v > acc;
        acc = take ? v : acc;
        arg = take ? partial_arg[j * C + c] : arg;
      }
      out[t] = acc;
      argmax[t] = arg;
    } else {
      T acc = T(0);
      for (int64_t j = j0; j < j1; ++j) acc = acc + partial[j * C + c];
      const int64_t n = starts[b + 1] - starts[b];
      if (average && n > 1) acc = acc / static_cast<T>(n);
      out[t] = acc;
    }
  }
}

template <typename T>
__global__ void GlobalSumGradKernel(
    const T* __restrict__ grad, int64_t C, const int32_t* __restrict__ batch,
    int64_t n, int64_t num_batches,
    const unsigned long long* __restrict__ counts, bool average,
    T* __restrict__ out) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       t < n * C; t += step) {
    const int64_t i = t / C, c = t % C;
    const int32_t b = batch[i];
    if (b < 0 || b >= num_batches) {
      out[t] = T(0);  // reported by the check
      continue;
    }
    const T g = grad[int64_t{b} * C + c];
    out[t] = average ? g * (T(1) / static_cast<T>(counts[b])) : g;
  }
}

// --- Workspace layouts
// ---------------------------------------------------------

// CUB's temporary storage: the max-pool gradient's (64-bit keys, double
// buffers) and the batch grouping's (32-bit keys). Sized for every key bit,
// an upper bound for the bits sorted. SIZE_MAX when CUB refuses the size.
size_t ArgmaxSortBytes(int64_t n) {
  size_t bytes = 0;
  cub::DoubleBuffer<uint64_t> keys(nullptr, nullptr);
  cub::DoubleBuffer<int32_t> rows(nullptr, nullptr);
  const cudaError_t e = cub::DeviceRadixSort::SortPairs(
      nullptr, bytes, keys, rows, static_cast<int>(std::min(n, kMaxSortItems)));
  return e == cudaSuccess ? bytes : SIZE_MAX;
}

size_t BatchSortBytes(int64_t n) {
  size_t bytes = 0;
  const cudaError_t e = cub::DeviceRadixSort::SortPairs(
      nullptr, bytes, static_cast<const uint32_t*>(nullptr),
      static_cast<uint32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
      static_cast<int32_t*>(nullptr),
      static_cast<int>(std::min(n, kMaxSortItems)));
  return e == cudaSuccess ? bytes : SIZE_MAX;
}

size_t ScanBytes(int64_t n) {
  size_t bytes = 0;
  const cudaError_t e = cub::DeviceScan::ExclusiveSum(
      nullptr, bytes, static_cast<const int64_t*>(nullptr),
      static_cast<int64_t*>(nullptr),
      static_cast<int>(std::min(n, kMaxSortItems)));
  return e == cudaSuccess ? bytes : SIZE_MAX;
}

struct ArgmaxSortBuffers {
  uint64_t* keys[2];
  int32_t* rows[2];
  void* temp;
  size_t temp_bytes;
  size_t bytes;
};

ArgmaxSortBuffers CarveArgmaxSort(void* workspace, int64_t N) {
  Carver c(workspace);
  ArgmaxSortBuffers b;
  for (int i = 0; i < 2; ++i) {
    b.keys[i] = c.Take<uint64_t>(N);
    b.rows[i] = c.Take<int32_t>(N);
  }
  b.temp_bytes = ArgmaxSortBytes(N);
  b.temp = c.TakeBytes(b.temp_bytes);
  b.bytes = c.used();
  return b;
}

// The grouping of rows by batch item and the global pools' partials.
struct GroupBuffers {
  uint32_t *keys_in, *keys_out;
  int32_t *rows, *order;
  unsigned long long* counts;              // [B + 1]
  int64_t *starts, *chunks, *chunk_first;  // [B + 1]
  void* temp;
  size_t temp_bytes;
  int64_t max_chunks;
  void* partial;
  int32_t* partial_arg;
  size_t bytes;
};

template <typename T>
GroupBuffers CarveGroups(void* workspace, int64_t n, int64_t C, int64_t B) {
  Carver c(workspace);
  GroupBuffers g;
  g.keys_in = c.Take<uint32_t>(n);
  g.keys_out = c.Take<uint32_t>(n);
  g.rows = c.Take<int32_t>(n);
  g.order = c.Take<int32_t>(n);
  g.counts = c.Take<unsigned long long>(B + 1);
  g.starts = c.Take<int64_t>(B + 1);
  g.chunks = c.Take<int64_t>(B + 1);
  g.chunk_first = c.Take<int64_t>(B + 1);
  g.temp_bytes = std::max(BatchSortBytes(n), ScanBytes(B + 1));
  g.temp = c.TakeBytes(g.temp_bytes);
  // Non-empty items have at most n / chunk + 1 chunks each: at most
  // n / chunk + min(n, B) in all.
  g.max_chunks = n / kGlobalChunk + std::min(n, B);
  g.partial = c.Take<T>(CountProduct(g.max_chunks, C));
  g.partial_arg = c.Take<int32_t>(CountProduct(g.max_chunks, C));
  g.bytes = c.used();
  return g;
}

// The sorts take int item counts (CUB of CUDA 12.0).
Status CheckIndexSizes(int64_t entries, const char* what) {
  if (entries < 0 || entries >= kMaxSortItems) {
    return Status::Error(std::string("the GPU ") + what +
                         " supports fewer than 2^31 - 1 " +
                         "entries (rows x channels), got " +
                         (entries < 0 ? std::string("more than 2^63")
                                      : std::to_string(entries)));
  }
  return Status::Ok();
}

// Only checks batch (the global pools without channels: the CPU groups
// nothing then either, and allocates nothing of num_batches).
Status CheckBatch(const int32_t* batch, int64_t n, int64_t B, IndexCheck* check,
                  GpuStream stream) {
  InitCheckKernel<<<1, 1, 0, stream>>>(check);
  BatchKeysKernel<<<GridFor(n), kThreads, 0, stream>>>(batch, n, B, nullptr,
                                                       nullptr, nullptr, check);
  FinishCheckKernel<<<1, 1, 0, stream>>>(batch, check);
  return LaunchStatus("batch_index check");
}

// Groups rows by batch item (stable) and writes starts and chunk_first.
Status GroupRows(const int32_t* batch, int64_t n, int64_t B,
                 const GroupBuffers& g, IndexCheck* check, GpuStream stream) {
  cudaMemsetAsync(g.counts, 0, (B + 1) * sizeof(unsigned long long), stream);
  InitCheckKernel<<<1, 1, 0, stream>>>(check);
  BatchKeysKernel<<<GridFor(n), kThreads, 0, stream>>>(batch, n, B, g.keys_in,
                                                       g.rows, g.counts, check);
  FinishCheckKernel<<<1, 1, 0, stream>>>(batch, check);
  cudaError_t e = cudaSuccess;
  if (n > 0) {
    size_t temp_bytes = g.temp_bytes;
    e = cub::DeviceRadixSort::SortPairs(
        g.temp, temp_bytes, g.keys_in, g.keys_out, g.rows, g.order,
        static_cast<int>(n), 0, BitsToHold(static_cast<uint64_t>(B)), stream);
  }
  size_t temp_bytes = g.temp_bytes;
  // counts is unsigned long long; the scan reads it as int64 (same bits).
  if (e == cudaSuccess) {
    e = cub::DeviceScan::ExclusiveSum(
        g.temp, temp_bytes, reinterpret_cast<const int64_t*>(g.counts),
        g.starts, static_cast<int>(B + 1), stream);
  }
  ChunkCountKernel<<<GridFor(B + 1), kThreads, 0, stream>>>(g.counts, B,
                                                            g.chunks);
  temp_bytes = g.temp_bytes;
  if (e == cudaSuccess) {
    e = cub::DeviceScan::ExclusiveSum(g.temp, temp_bytes, g.chunks,
                                      g.chunk_first, static_cast<int>(B + 1),
                                      stream);
  }
  if (e != cudaSuccess) return CudaStatus(e, "global pool grouping");
  return LaunchStatus("global pool grouping");
}

template <typename T>
Status GlobalPool(const T* in, int64_t n, int64_t C, const int32_t* batch,
                  int64_t B, bool is_max, bool average, T* out, int32_t* argmax,
                  IndexCheck* check, void* workspace, size_t workspace_bytes,
                  GpuStream stream) {
  Status status = CheckIndexSizes(n, "global pool");
  if (!status.ok()) return status;
  if (B < 0 || B >= kMaxSortItems) {
    return Status::Error(
        "sparse_ops GPU global pool: num_batches out of range: " +
        std::to_string(B));
  }
  if (C == 0)
    return CheckBatch(batch, n, B, check, stream);  // nothing to reduce
  const GroupBuffers g = CarveGroups<T>(workspace, n, C, B);
  status = CheckWorkspace(workspace_bytes, g.bytes, "global pool");
  if (!status.ok()) return status;
  status = GroupRows(batch, n, B, g, check, stream);
  if (!status.ok()) return status;
  T* partial = static_cast<T*>(g.partial);
  GlobalChunkKernel<T><<<GridFor(g.max_chunks * C), kThreads, 0, stream>>>(
      in, C, g.order, g.starts, g.chunk_first, B, g.max_chunks, is_max, partial,
      g.partial_arg);
  GlobalItemKernel<T><<<GridFor(B * C), kThreads, 0, stream>>>(
      C, g.starts, g.chunk_first, B, is_max, average, partial, g.partial_arg,
      out, argmax);
  return LaunchStatus(is_max ? "GlobalMaxPool" : "GlobalSumPool");
}

}  // namespace

Status ArgmaxCheckStatus(const IndexCheck& check, int64_t n_in) {
  if (check.bad == kNone) return Status::Ok();
  return Status::Error("argmax entry " + std::to_string(check.bad) + " is " +
                       std::to_string(check.value) + ", out of range [-1, " +
                       std::to_string(n_in) + ")");
}

Status BatchCheckStatus(const IndexCheck& check, int64_t num_batches) {
  if (check.bad == kNone) return Status::Ok();
  return Status::Error("batch index of row " + std::to_string(check.bad) +
                       " is " + std::to_string(check.value) +
                       ", out of range [0, " + std::to_string(num_batches) +
                       ")");
}

template <typename T>
Status MaxPool(const T* in, int64_t n_in, int64_t channels,
               const DeviceKernelMap& map, int64_t n_out, T* out,
               int32_t* argmax, GpuStream stream) {
  if (n_out == 0) return Status::Ok();
  MaxPoolKernel<T><<<WarpGrid(n_out), kThreads, 0, stream>>>(
      in, n_in, channels, map.splits, map.in_rows, map.out_rows,
      map.num_offsets, map.num_pairs, n_out, out, argmax);
  return LaunchStatus("MaxPool");
}

template <typename T>
size_t MaxPoolGradWorkspaceBytes(int64_t n_out, int64_t channels,
                                 int64_t n_in) {
  return CarveArgmaxSort(nullptr, CountProduct(n_out, channels)).bytes;
}

template <typename T>
Status MaxPoolGrad(const T* grad_out, const int32_t* argmax, int64_t channels,
                   int64_t n_out, int64_t n_in, T* grad_in, IndexCheck* check,
                   void* workspace, size_t workspace_bytes, GpuStream stream) {
  const int64_t N = CountProduct(n_out, channels);
  Status status = CheckIndexSizes(N, "MaxPoolGrad");
  if (!status.ok()) return status;
  const ArgmaxSortBuffers b = CarveArgmaxSort(workspace, N);
  status = CheckWorkspace(workspace_bytes, b.bytes, "MaxPoolGrad");
  if (!status.ok()) return status;
  cudaMemsetAsync(grad_in, 0, static_cast<size_t>(n_in * channels) * sizeof(T),
                  stream);
  InitCheckKernel<<<1, 1, 0, stream>>>(check);
  if (N > 0) {
    const uint64_t sentinel = static_cast<uint64_t>(n_in) * channels;
    ArgmaxKeysKernel<<<GridFor(N), kThreads, 0, stream>>>(
        argmax, N, channels, n_in, b.keys[0], b.rows[0], check);
    cub::DoubleBuffer<uint64_t> keys(b.keys[0], b.keys[1]);
    cub::DoubleBuffer<int32_t> rows(b.rows[0], b.rows[1]);
    size_t temp_bytes = b.temp_bytes;
    // Stable: the terms of one (row, channel) stay in increasing output row.
    const cudaError_t e = cub::DeviceRadixSort::SortPairs(
        b.temp, temp_bytes, keys, rows, static_cast<int>(N), 0,
        BitsToHold(sentinel), stream);
    if (e != cudaSuccess) return CudaStatus(e, "MaxPoolGrad sort");
    ArgmaxSumKernel<T><<<GridFor(N), kThreads, 0, stream>>>(
        keys.Current(), rows.Current(), N, channels, sentinel, grad_out,
        grad_in);
  }
  FinishCheckKernel<<<1, 1, 0, stream>>>(argmax, check);
  return LaunchStatus("MaxPoolGrad");
}

template <typename T>
Status SumPool(const T* in, int64_t n_in, int64_t channels,
               const DeviceKernelMap& map, int64_t n_out, bool average, T* out,
               GpuStream stream) {
  if (n_out == 0) return Status::Ok();
  SumPoolKernel<T><<<WarpGrid(n_out), kThreads, 0, stream>>>(
      in, n_in, channels, map.splits, map.in_rows, map.out_rows,
      map.num_offsets, map.num_pairs, n_out, average, out);
  return LaunchStatus("SumPool");
}

namespace {

struct TransposeSumBuffers {
  int32_t *t_in_rows, *t_out_rows;
  void* transpose;
  size_t transpose_bytes;
  void* inverse;
  size_t bytes;
};

template <typename T>
TransposeSumBuffers CarveTransposeSum(void* workspace, int64_t K, int64_t P,
                                      int64_t n_in, int64_t n_out) {
  Carver c(workspace);
  TransposeSumBuffers b;
  b.t_in_rows = c.Take<int32_t>(P);
  b.t_out_rows = c.Take<int32_t>(P);
  b.transpose_bytes = TransposeKernelMapWorkspaceBytes(n_in, K);
  b.transpose = c.TakeBytes(b.transpose_bytes);
  b.inverse = c.Take<T>(n_out);
  b.bytes = c.used();
  return b;
}

}  // namespace

template <typename T>
size_t SumPoolTransposeWorkspaceBytes(int64_t num_offsets, int64_t num_pairs,
                                      int64_t n_in, int64_t n_out) {
  return CarveTransposeSum<T>(nullptr, num_offsets, num_pairs, n_in, n_out)
      .bytes;
}

template <typename T>
Status SumPoolTranspose(const T* in, int64_t n_out, int64_t channels,
                        const DeviceKernelMap& map, int64_t n_in, bool average,
                        T* out, void* workspace, size_t workspace_bytes,
                        GpuStream stream, KernelMapCheck* check) {
  const int64_t K = map.num_offsets, P = map.num_pairs;
  const TransposeSumBuffers b =
      CarveTransposeSum<T>(workspace, K, P, n_in, n_out);
  Status status = CheckWorkspace(workspace_bytes, b.bytes, "SumPoolTranspose");
  if (!status.ok()) return status;
  if (n_in == 0) return Status::Ok();
  status = TransposeKernelMap(map, n_in, b.t_in_rows, b.t_out_rows, b.transpose,
                              b.transpose_bytes, stream, check);
  if (!status.ok()) return status;
  T* inverse = nullptr;
  if (average) {
    inverse = static_cast<T*>(b.inverse);
    InverseCountKernel<T><<<GridFor(n_out), kThreads, 0, stream>>>(
        map.splits, map.out_rows, K, P, n_out, inverse);
  }
  SumPoolTransposeKernel<T><<<WarpGrid(n_in), kThreads, 0, stream>>>(
      in, n_out, channels, map.splits, b.t_in_rows, b.t_out_rows, K, P, n_in,
      inverse, out);
  return LaunchStatus("SumPoolTranspose");
}

template <typename T>
size_t GlobalPoolWorkspaceBytes(int64_t n, int64_t channels,
                                int64_t num_batches) {
  return channels == 0
             ? 0
             : CarveGroups<T>(nullptr, n, channels, num_batches).bytes;
}

template <typename T>
Status GlobalMaxPool(const T* in, int64_t n, int64_t channels,
                     const int32_t* batch, int64_t num_batches, T* out,
                     int32_t* argmax, IndexCheck* check, void* workspace,
                     size_t workspace_bytes, GpuStream stream) {
  return GlobalPool<T>(in, n, channels, batch, num_batches, /*is_max=*/true,
                       /*average=*/false, out, argmax, check, workspace,
                       workspace_bytes, stream);
}

template <typename T>
Status GlobalSumPool(const T* in, int64_t n, int64_t channels,
                     const int32_t* batch, int64_t num_batches, bool average,
                     T* out, IndexCheck* check, void* workspace,
                     size_t workspace_bytes, GpuStream stream) {
  return GlobalPool<T>(in, n, channels, batch, num_batches, /*is_max=*/false,
                       average, out, nullptr, check, workspace, workspace_bytes,
                       stream);
}

size_t GlobalSumPoolGradWorkspaceBytes(int64_t num_batches, int64_t channels) {
  if (channels == 0) return 0;
  Carver c(nullptr);
  c.Take<unsigned long long>(num_batches + 1);
  return c.used();
}

template <typename T>
Status GlobalSumPoolGrad(const T* grad, int64_t channels, const int32_t* batch,
                         int64_t n, int64_t num_batches, bool average, T* out,
                         IndexCheck* check, void* workspace,
                         size_t workspace_bytes, GpuStream stream) {
  Status status = CheckIndexSizes(n, "GlobalSumPoolGrad");
  if (!status.ok()) return status;
  if (channels == 0) return CheckBatch(batch, n, num_batches, check, stream);
  status = CheckWorkspace(
      workspace_bytes, GlobalSumPoolGradWorkspaceBytes(num_batches, channels),
      "GlobalSumPoolGrad");
  if (!status.ok()) return status;
  auto* counts = static_cast<unsigned long long*>(workspace);
  cudaMemsetAsync(counts, 0, (num_batches + 1) * sizeof(unsigned long long),
                  stream);
  InitCheckKernel<<<1, 1, 0, stream>>>(check);
  BatchKeysKernel<<<GridFor(n), kThreads, 0, stream>>>(
      batch, n, num_batches, nullptr, nullptr, counts, check);
  FinishCheckKernel<<<1, 1, 0, stream>>>(batch, check);
  if (n * channels > 0) {
    GlobalSumGradKernel<T><<<GridFor(n * channels), kThreads, 0, stream>>>(
        grad, channels, batch, n, num_batches, counts, average, out);
  }
  return LaunchStatus("GlobalSumPoolGrad");
}

#define SPARSE_OPS_INSTANTIATE(T)                                              \
  template Status MaxPool<T>(const T*, int64_t, int64_t,                       \
                             const DeviceKernelMap&, int64_t, T*, int32_t*,    \
                             GpuStream);                                       \
  template size_t MaxPoolGradWorkspaceBytes<T>(int64_t, int64_t, int64_t);     \
  template Status MaxPoolGrad<T>(const T*, const int32_t*, int64_t, int64_t,   \
                                 int64_t, T*, IndexCheck*, void*, size_t,      \
                                 GpuStream);                                   \
  template Status SumPool<T>(const T*, int64_t, int64_t,                       \
                             const DeviceKernelMap&, int64_t, bool, T*,        \
                             GpuStream);                                       \
  template size_t SumPoolTransposeWorkspaceBytes<T>(int64_t, int64_t, int64_t, \
                                                    int64_t);                  \
  template Status SumPoolTranspose<T>(                                         \
      const T*, int64_t, int64_t, const DeviceKernelMap&, int64_t, bool, T*,   \
      void*, size_t, GpuStream, KernelMapCheck*);                              \
  template size_t GlobalPoolWorkspaceBytes<T>(int64_t, int64_t, int64_t);      \
  template Status GlobalMaxPool<T>(const T*, int64_t, int64_t, const int32_t*, \
                                   int64_t, T*, int32_t*, IndexCheck*, void*,  \
                                   size_t, GpuStream);                         \
  template Status GlobalSumPool<T>(const T*, int64_t, int64_t, const int32_t*, \
                                   int64_t, bool, T*, IndexCheck*, void*,      \
                                   size_t, GpuStream);                         \
  template Status GlobalSumPoolGrad<T>(const T*, int64_t, const int32_t*,      \
                                       int64_t, int64_t, bool, T*,             \
                                       IndexCheck*, void*, size_t, GpuStream);
SPARSE_OPS_INSTANTIATE(float)
SPARSE_OPS_INSTANTIATE(double)
#undef SPARSE_OPS_INSTANTIATE

}  // namespace gpu
}  // namespace sparse_ops
