#include "kernels/core/pool.h"

#include <algorithm>
#include <atomic>
#include <string>
#include <vector>

#include "kernels/core/isa.h"

namespace sparse_ops {

namespace {

// Fixed blocks, whatever the thread count.
constexpr int64_t kRowBlock = 4096;
// Output rows per block of the map-walking kernels: the block's rows of the
// output (and argmax) stay in the L2 cache while every offset is applied.
constexpr int64_t kBlockRows = 256;
// 16 channels: a whole cache line of floats per unit, so that units never
// write to the same line.
constexpr int64_t kChannelBlock = 16;
// Rows per partial result of the global pools.
constexpr int64_t kGlobalChunk = 2048;

int64_t NumBlocks(int64_t n, int64_t block) { return (n + block - 1) / block; }

// Calls fn(o0, rows, pair_begin, pair_end) for fixed blocks of kBlockRows
// output rows, in parallel; pair_begin[k] .. pair_end[k] are the pairs of
// offset k whose output row lies in the block (one run: the map is sorted
// by output row within an offset).
template <typename Fn>
void ForOutputBlocks(const KernelMapView& map, int64_t n_out,
                     int64_t cost_per_pair, const ParallelFor& parallel_for,
                     const Fn& fn) {
  const int64_t K = map.num_offsets;
  const int64_t num_blocks = NumBlocks(n_out, kBlockRows);
  const int64_t cost =
      (map.splits[K] / std::max<int64_t>(num_blocks, 1) + kBlockRows) *
      cost_per_pair;
  const Isa isa = ActiveIsa();
  parallel_for(num_blocks, cost, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> pair_begin(K), pair_end(K);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t o0 = b * kBlockRows;
      const int64_t rows = std::min(kBlockRows, n_out - o0);
      for (int64_t k = 0; k < K; ++k) {
        const int32_t* first = map.out_rows + map.splits[k];
        const int32_t* last = map.out_rows + map.splits[k + 1];
        const int32_t* lo = std::lower_bound(first, last, o0);
        pair_begin[k] = lo - map.out_rows;
        pair_end[k] = std::lower_bound(lo, last, o0 + rows) - map.out_rows;
      }
      // The block's channel loops, vectorized for the CPU's path.
      RunVectorized(isa,
                    [&] { fn(o0, rows, pair_begin.data(), pair_end.data()); });
    }
  });
}

}  // namespace

template <typename T>
void SparseMaxPool(const T* in, int64_t channels, const KernelMapView& map,
                   int64_t n_out, T* out, int32_t* argmax,
                   const ParallelFor& parallel_for) {
  const int64_t C = channels, K = map.num_offsets;
  ForOutputBlocks(map, n_out, 2 * C, parallel_for,
                  [&](int64_t o0, int64_t rows, const int64_t* pair_begin,
                      const int64_t* pair_end) {
                    T* acc = out + o0 * C;
                    int32_t* arg = argmax + o0 * C;
                    std::fill(acc, acc + rows * C, T(0));
                    std::fill(arg, arg + rows * C, int32_t{-1});
                    for (int64_t k = 0; k < K; ++k) {
                      for (int64_t p = pair_begin[k]; p < pair_end[k]; ++p) {
                        const int32_t i = map.in_rows[p];
                        const T* src = in + int64_t{i} * C;
                        T* dst = acc + (map.out_rows[p] - o0) * C;
                        int32_t* a = arg + (map.out_rows[p] - o0) * C;
                        // Branch-free (random data defeats branch prediction);
                        // strict >: ties keep the earlier offset.
                        for (int64_t c = 0; c < C; ++c) {
                          const T v = src[c], cur = dst[c];
                          const int32_t a_cur = a[c];
                          const bool take = (a_cur < 0) | (v > cur);
                          dst[c] = take ? v : cur;
                          a[c] = take ? i : a_cur;
                        }
                      }
                    }
                  });
}

Status ValidateArgmax(const int32_t* argmax, int64_t n, int64_t n_in,
                      const ParallelFor& parallel_for) {
  std::atomic<int64_t> bad{-1};
  parallel_for(
      NumBlocks(n, kRowBlock), kRowBlock, [&](int64_t begin, int64_t end) {
        const int64_t hi = std::min(n, end * kRowBlock);
        for (int64_t j = begin * kRowBlock; j < hi; ++j) {
          if (argmax[j] < -1 || argmax[j] >= n_in) {
            // Keep the smallest bad index for a stable message.
            int64_t cur = bad.load();
            while ((cur < 0 || cur > j) && !bad.compare_exchange_weak(cur, j)) {
            }
            return;
          }
        }
      });
  const int64_t j = bad.load();
  if (j < 0) return Status::Ok();
  return Status::Error("argmax entry " + std::to_string(j) + " is " +
                       std::to_string(argmax[j]) + ", out of range [-1, " +
                       std::to_string(n_in) + ")");
}

template <typename T>
void SparseMaxPoolGrad(const T* grad_out, const int32_t* argmax,
                       int64_t channels, int64_t n_out, int64_t n_in,
                       T* grad_in, const ParallelFor& parallel_for) {
  const int64_t C = channels;
  parallel_for(NumBlocks(n_in, kRowBlock), kRowBlock * C,
               [&](int64_t begin, int64_t end) {
                 const int64_t hi = std::min(n_in, end * kRowBlock);
                 std::fill(grad_in + begin * kRowBlock * C, grad_in + hi * C,
                           T(0));
               });
  if (C == 0) return;
  // Each channel block is one unit walking all output rows in order, so
  // every sum is taken in increasing output row.
  parallel_for(NumBlocks(C, kChannelBlock), n_out * kChannelBlock * 2,
               [&](int64_t begin, int64_t end) {
                 const int64_t c_lo = begin * kChannelBlock;
                 const int64_t c_hi = std::min(C, end * kChannelBlock);
                 for (int64_t o = 0; o < n_out; ++o) {
                   const T* g = grad_out + o * C;
                   const int32_t* arg = argmax + o * C;
                   for (int64_t c = c_lo; c < c_hi; ++c) {
                     if (arg[c] >= 0) grad_in[int64_t{arg[c]} * C + c] += g[c];
                   }
                 }
               });
}

template <typename T>
void SparseSumPool(const T* in, int64_t channels, const KernelMapView& map,
                   int64_t n_out, bool average, T* out,
                   const ParallelFor& parallel_for) {
  const int64_t C = channels, K = map.num_offsets;
  ForOutputBlocks(map, n_out, C, parallel_for,
                  [&](int64_t o0, int64_t rows, const int64_t* pair_begin,
                      const int64_t* pair_end) {
                    T* acc = out + o0 * C;
                    std::fill(acc, acc + rows * C, T(0));
                    int32_t count[kBlockRows] = {};
                    for (int64_t k = 0; k < K; ++k) {
                      for (int64_t p = pair_begin[k]; p < pair_end[k]; ++p) {
                        const T* src = in + int64_t{map.in_rows[p]} * C;
                        const int64_t r = map.out_rows[p] - o0;
                        T* dst = acc + r * C;
                        for (int64_t c = 0; c < C; ++c) dst[c] += src[c];
                        ++count[r];
                      }
                    }
                    if (!average) return;
                    for (int64_t r = 0; r < rows; ++r) {
                      if (count[r] < 2) continue;  // 0 stays 0, x / 1 == x
                      T* dst = acc + r * C;
                      const T n = static_cast<T>(count[r]);
                      for (int64_t c = 0; c < C; ++c) dst[c] /= n;
                    }
                  });
}

template <typename T>
void SparseSumPoolTranspose(const T* in, int64_t channels,
                            const KernelMapView& map,
                            const KernelMapView& transposed, int64_t n_in,
                            int64_t n_out, bool average, T* inverse_counts,
                            T* out, const ParallelFor& parallel_for) {
  const int64_t C = channels, K = map.num_offsets;
  if (average) {
    ForOutputBlocks(map, n_out, 1, parallel_for,
                    [&](int64_t o0, int64_t rows, const int64_t* pair_begin,
                        const int64_t* pair_end) {
                      int32_t count[kBlockRows] = {};
                      for (int64_t k = 0; k < K; ++k) {
                        for (int64_t p = pair_begin[k]; p < pair_end[k]; ++p) {
                          ++count[map.out_rows[p] - o0];
                        }
                      }
                      for (int64_t r = 0; r < rows; ++r) {
                        inverse_counts[o0 + r] =
                            count[r] ? T(1) / static_cast<T>(count[r]) : T(0);
                      }
                    });
  }
  // Blocks of rows of `out`; each adds its rows' terms offset by offset (at
  // most one per offset and row).
  ForOutputBlocks(transposed, n_in, C, parallel_for,
                  [&](int64_t i0, int64_t rows, const int64_t* pair_begin,
                      const int64_t* pair_end) {
                    T* acc = out + i0 * C;
                    std::fill(acc, acc + rows * C, T(0));
                    for (int64_t k = 0; k < K; ++k) {
                      for (int64_t p = pair_begin[k]; p < pair_end[k]; ++p) {
                        const int32_t o = transposed.in_rows[p];
                        const T* src = in + int64_t{o} * C;
                        T* dst = acc + (transposed.out_rows[p] - i0) * C;
                        if (average) {
                          const T s = inverse_counts[o];
                          for (int64_t c = 0; c < C; ++c) dst[c] += src[c] * s;
                        } else {
                          for (int64_t c = 0; c < C; ++c) dst[c] += src[c];
                        }
                      }
                    }
                  });
}

Status GroupByBatch(const int32_t* batch, int64_t n, int64_t num_batches,
                    int64_t* starts, int32_t* order, int64_t* scratch) {
  // A counting sort (stable: rows stay increasing within an item). Serial:
  // two passes over n ints cost far less than the reductions that follow.
  std::fill(starts, starts + num_batches + 1, int64_t{0});
  for (int64_t i = 0; i < n; ++i) {
    const int32_t b = batch[i];
    if (b < 0 || b >= num_batches) {
      return Status::Error("batch index of row " + std::to_string(i) + " is " +
                           std::to_string(b) + ", out of range [0, " +
                           std::to_string(num_batches) + ")");
    }
    ++starts[b + 1];
  }
  for (int64_t b = 0; b < num_batches; ++b) starts[b + 1] += starts[b];
  int64_t* next = scratch;
  std::copy(starts, starts + num_batches, next);
  for (int64_t i = 0; i < n; ++i)
    order[next[batch[i]]++] = static_cast<int32_t>(i);
  return Status::Ok();
}

int64_t GlobalPoolChunks(const int64_t* starts, int64_t num_batches,
                         int64_t* chunk_first) {
  chunk_first[0] = 0;
  for (int64_t b = 0; b < num_batches; ++b) {
    chunk_first[b + 1] =
        chunk_first[b] + NumBlocks(starts[b + 1] - starts[b], kGlobalChunk);
  }
  return chunk_first[num_batches];
}

Status GroupGlobalPoolRows(const int32_t* batch, int64_t n, int64_t num_batches,
                           int64_t channels, const Allocate& allocate,
                           GlobalPoolGroups* groups) {
  if (channels == 0) {
    for (int64_t i = 0; i < n; ++i) {
      if (batch[i] < 0 || batch[i] >= num_batches) {
        return Status::Error("batch index of row " + std::to_string(i) +
                             " is " + std::to_string(batch[i]) +
                             ", out of range [0, " +
                             std::to_string(num_batches) + ")");
      }
    }
    return Status::Ok();
  }
  auto* starts = AllocateArray<int64_t>(allocate, num_batches + 1);
  auto* order = AllocateArray<int32_t>(allocate, n);
  auto* chunk_first = AllocateArray<int64_t>(allocate, num_batches + 1);
  if (starts == nullptr || order == nullptr || chunk_first == nullptr) {
    return Status::OutOfMemory("out of memory to group " + std::to_string(n) +
                               " rows into " + std::to_string(num_batches) +
                               " batch items");
  }
  // chunk_first doubles as GroupByBatch's scratch.
  const Status status =
      GroupByBatch(batch, n, num_batches, starts, order, chunk_first);
  if (!status.ok()) return status;
  groups->starts = starts;
  groups->order = order;
  groups->chunk_first = chunk_first;
  groups->num_chunks = GlobalPoolChunks(starts, num_batches, chunk_first);
  return Status::Ok();
}

namespace {

// Calls chunk(lo, hi, j) for every chunk j (rows order[lo .. hi)) in
// parallel, then item(b, first_chunk, end_chunk) for every item in parallel.
template <typename ChunkFn, typename ItemFn>
void ForChunks(const int64_t* starts, const int64_t* first, int64_t num_batches,
               int64_t channels, const ParallelFor& parallel_for,
               const ChunkFn& chunk, const ItemFn& item) {
  const int64_t num_chunks = first[num_batches];
  const Isa isa = ActiveIsa();
  parallel_for(
      num_chunks, kGlobalChunk * channels, [&](int64_t begin, int64_t end) {
        // The item of chunk `begin`: the last b with first[b] <= begin.
        int64_t b =
            std::upper_bound(first, first + num_batches + 1, begin) - first - 1;
        for (int64_t j = begin; j < end; ++j) {
          while (first[b + 1] <= j) ++b;
          const int64_t lo = starts[b] + (j - first[b]) * kGlobalChunk;
          RunVectorized(isa, [&] {
            chunk(lo, std::min(starts[b + 1], lo + kGlobalChunk), j);
          });
        }
      });
  parallel_for(num_batches,
               (num_chunks / std::max<int64_t>(num_batches, 1) + 1) * channels,
               [&](int64_t begin, int64_t end) {
                 RunVectorized(isa, [&] {
                   for (int64_t b = begin; b < end; ++b)
                     item(b, first[b], first[b + 1]);
                 });
               });
}

}  // namespace

template <typename T>
void GlobalMaxPool(const T* in, int64_t channels, const int64_t* starts,
                   const int32_t* order, const int64_t* chunk_first,
                   int64_t num_batches, T* partial, int32_t* partial_argmax,
                   T* out, int32_t* argmax, const ParallelFor& parallel_for) {
  const int64_t C = channels;
  // Strict > everywhere: ties keep the lowest row (rows and chunks are
  // visited in increasing row order).
  ForChunks(
      starts, chunk_first, num_batches, C, parallel_for,
      [&](int64_t lo, int64_t hi, int64_t j) {
        T* acc = partial + j * C;
        int32_t* arg = partial_argmax + j * C;
        const int32_t first = order[lo];
        std::copy(in + int64_t{first} * C, in + int64_t{first} * C + C, acc);
        std::fill(arg, arg + C, first);
        for (int64_t r = lo + 1; r < hi; ++r) {
          const int32_t i = order[r];
          const T* src = in + int64_t{i} * C;
          for (int64_t c = 0; c < C; ++c) {
            const bool take = src[c] > acc[c];
            acc[c] = take ? src[c] : acc[c];
            arg[c] = take ? i : arg[c];
          }
        }
      },
      [&](int64_t b, int64_t j0, int64_t j1) {
        T* dst = out + b * C;
        int32_t* arg = argmax + b * C;
        if (j0 == j1) {
          std::fill(dst, dst + C, T(0));
          std::fill(arg, arg + C, int32_t{-1});
          return;
        }
        std::copy(partial + j0 * C, partial + j0 * C + C, dst);
        std::copy(partial_argmax + j0 * C, partial_argmax + j0 * C + C, arg);
        for (int64_t j = j0 + 1; j < j1; ++j) {
          const T* src = partial + j * C;
          const int32_t* src_arg = partial_argmax + j * C;
          for (int64_t c = 0; c < C; ++c) {
            const bool take = src[c] > dst[c];
            dst[c] = take ? src[c] : dst[c];
            arg[c] = take ? src_arg[c] : arg[c];
          }
        }
      });
}

template <typename T>
void GlobalSumPool(const T* in, int64_t channels, const int64_t* starts,
                   const int32_t* order, const int64_t* chunk_first,
                   int64_t num_batches, bool average, T* partial, T* out,
                   const ParallelFor& parallel_for) {
  const int64_t C = channels;
  ForChunks(
      starts, chunk_first, num_batches, C, parallel_for,
      [&](int64_t lo, int64_t hi, int64_t j) {
        T* acc = partial + j * C;
        std::fill(acc, acc + C, T(0));
        for (int64_t r = lo; r < hi; ++r) {
          const T* src = in + int64_t{order[r]} * C;
          for (int64_t c = 0; c < C; ++c) acc[c] += src[c];
        }
      },
      [&](int64_t b, int64_t j0, int64_t j1) {
        T* dst = out + b * C;
        std::fill(dst, dst + C, T(0));
        for (int64_t j = j0; j < j1; ++j) {
          const T* src = partial + j * C;
          for (int64_t c = 0; c < C; ++c) dst[c] += src[c];
        }
        const int64_t n = starts[b + 1] - starts[b];
        if (average && n > 1) {
          for (int64_t c = 0; c < C; ++c) dst[c] /= static_cast<T>(n);
        }
      });
}

template <typename T>
void GlobalSumPoolGrad(const T* grad, int64_t channels, const int32_t* batch,
                       int64_t n, const int64_t* starts, bool average, T* out,
                       const ParallelFor& parallel_for) {
  const int64_t C = channels;
  const Isa isa = ActiveIsa();
  parallel_for(NumBlocks(n, kBlockRows), kBlockRows * C,
               [&](int64_t begin, int64_t end) {
                 RunVectorized(isa, [&] {
                   const int64_t hi = std::min(n, end * kBlockRows);
                   for (int64_t i = begin * kBlockRows; i < hi; ++i) {
                     const int32_t b = batch[i];
                     const T* src = grad + int64_t{b} * C;
                     T* dst = out + i * C;
                     if (average) {
                       const T s =
                           T(1) / static_cast<T>(starts[b + 1] - starts[b]);
                       for (int64_t c = 0; c < C; ++c) dst[c] = src[c] * s;
                     } else {
                       std::copy(src, src + C, dst);
                     }
                   }
                 });
               });
}

#define SPARSE_OPS_INSTANTIATE(T)                                             \
  template void SparseMaxPool<T>(const T*, int64_t, const KernelMapView&,     \
                                 int64_t, T*, int32_t*, const ParallelFor&);  \
  template void SparseMaxPoolGrad<T>(const T*, const int32_t*, int64_t,       \
                                     int64_t, int64_t, T*,                    \
                                     const ParallelFor&);                     \
  template void SparseSumPool<T>(const T*, int64_t, const KernelMapView&,     \
                                 int64_t, bool, T*, const ParallelFor&);      \
  template void SparseSumPoolTranspose<T>(                                    \
      const T*, int64_t, const KernelMapView&, const KernelMapView&, int64_t, \
      int64_t, bool, T*, T*, const ParallelFor&);                             \
  template void GlobalMaxPool<T>(const T*, int64_t, const int64_t*,           \
                                 const int32_t*, const int64_t*, int64_t, T*, \
                                 int32_t*, T*, int32_t*, const ParallelFor&); \
  template void GlobalSumPool<T>(const T*, int64_t, const int64_t*,           \
                                 const int32_t*, const int64_t*, int64_t,     \
                                 bool, T*, T*, const ParallelFor&);           \
  template void GlobalSumPoolGrad<T>(const T*, int64_t, const int32_t*,       \
                                     int64_t, const int64_t*, bool, T*,       \
                                     const ParallelFor&);
SPARSE_OPS_INSTANTIATE(float)
SPARSE_OPS_INSTANTIATE(double)
#undef SPARSE_OPS_INSTANTIATE

}  // namespace sparse_ops
