// Sparse pooling of the framework-free core over a kernel map
// (coordinates.h): max (with the argmax for the backward pass), sum and
// average, the transpose of sum/average pooling (unpooling, and their input
// gradient), and global pooling per batch item.
//
// Deterministic: output rows are cut into fixed blocks whatever the thread
// count; each block applies the offsets in order to an accumulator that
// stays in the L2 cache (the map is sorted by output row within an offset,
// so a block's pairs of one offset are one contiguous run). Every sum is
// taken in a fixed order and no two units write the same row.
#ifndef SPARSE_OPS_KERNELS_CORE_POOL_H_
#define SPARSE_OPS_KERNELS_CORE_POOL_H_

#include <cstdint>

#include "kernels/core/allocate.h"
#include "kernels/core/coordinates.h"
#include "kernels/core/parallel.h"
#include "kernels/core/status.h"

namespace sparse_ops {

// out[o, c] = max over the pairs (i, o) of in[i, c]; argmax[o, c] = that i
// (ties: the first in offset order), or -1 and out = 0 for rows without
// pairs. in is [n_in, channels], out and argmax [n_out, channels]. `map`
// must be valid for n_in and n_out (ValidateKernelMap).
template <typename T>
void SparseMaxPool(const T* in, int64_t channels, const KernelMapView& map,
                   int64_t n_out, T* out, int32_t* argmax,
                   const ParallelFor& parallel_for);

// Checks that every argmax entry lies in [-1, n_in); names the first bad one.
Status ValidateArgmax(const int32_t* argmax, int64_t n, int64_t n_in,
                      const ParallelFor& parallel_for);

// grad_in[i, c] = sum over the output rows o with argmax[o, c] == i of
// grad_out[o, c], summed in increasing o (parallel over channel blocks).
// grad_out and argmax are [n_out, channels], grad_in [n_in, channels];
// argmax must be valid (ValidateArgmax).
template <typename T>
void SparseMaxPoolGrad(const T* grad_out, const int32_t* argmax,
                       int64_t channels, int64_t n_out, int64_t n_in,
                       T* grad_in, const ParallelFor& parallel_for);

// out[o] = sum over the pairs (i, o) of in[i], in offset order; with
// `average` divided by the number of pairs of o. Rows without pairs get 0.
// in is [n_in, channels], out [n_out, channels]; `map` must be valid.
template <typename T>
void SparseSumPool(const T* in, int64_t channels, const KernelMapView& map,
                   int64_t n_out, bool average, T* out,
                   const ParallelFor& parallel_for);

// The transpose of SparseSumPool (unpooling; the input gradient of sum and
// average pooling): out[i] = sum over the pairs (i, o) of in[o], in offset
// order, with `average` each term times 1 / (number of pairs of o).
// in is [n_out, channels], out [n_in, channels]. `transposed` is
// TransposeKernelMap of a valid `map`; `inverse_counts` is scratch of n_out
// values (used only with `average`).
template <typename T>
void SparseSumPoolTranspose(const T* in, int64_t channels,
                            const KernelMapView& map,
                            const KernelMapView& transposed, int64_t n_in,
                            int64_t n_out, bool average, T* inverse_counts,
                            T* out, const ParallelFor& parallel_for);

// Groups rows by batch item: rows of item b are order[starts[b]] ..
// order[starts[b + 1] - 1], increasing. batch is [n]; starts has
// num_batches + 1 entries, order n, scratch num_batches. Fails on an entry
// outside [0, num_batches), naming it.
Status GroupByBatch(const int32_t* batch, int64_t n, int64_t num_batches,
                    int64_t* starts, int32_t* order, int64_t* scratch);

// The grouping of rows by batch item that the global pools share
// (GroupByBatch and GlobalPoolChunks), in memory from an Allocate.
struct GlobalPoolGroups {
  const int64_t* starts = nullptr;       // [num_batches + 1]
  const int32_t* order = nullptr;        // [n]
  const int64_t* chunk_first = nullptr;  // [num_batches + 1]
  int64_t num_chunks = 0;
};

// Checks batch [n] against num_batches and groups the rows; with channels
// 0 only checks (there is nothing to reduce, and no scratch of num_batches
// entries is needed).
Status GroupGlobalPoolRows(const int32_t* batch, int64_t n, int64_t num_batches,
                           int64_t channels, const Allocate& allocate,
                           GlobalPoolGroups* groups);

// The global pools reduce fixed chunks of each item's rows in parallel and
// then add the chunks of an item in order. Writes chunk_first[b] (the first
// chunk of item b; num_batches + 1 entries) and returns the chunk count.
int64_t GlobalPoolChunks(const int64_t* starts, int64_t num_batches,
                         int64_t* chunk_first);

// Global pooling of a grouping (GroupByBatch): out[b, c] = max (with
// argmax[b, c] the row; ties: the lowest row), sum, or mean (`average`)
// over the rows of item b; 0 (argmax -1) for items without rows.
// in is [n, channels], out and argmax [num_batches, channels]. partial
// holds (chunk count) * channels values, partial_argmax as many int32.
template <typename T>
void GlobalMaxPool(const T* in, int64_t channels, const int64_t* starts,
                   const int32_t* order, const int64_t* chunk_first,
                   int64_t num_batches, T* partial, int32_t* partial_argmax,
                   T* out, int32_t* argmax, const ParallelFor& parallel_for);
template <typename T>
void GlobalSumPool(const T* in, int64_t channels, const int64_t* starts,
                   const int32_t* order, const int64_t* chunk_first,
                   int64_t num_batches, bool average, T* partial, T* out,
                   const ParallelFor& parallel_for);

// The input gradient of GlobalSumPool: out[i] = grad[batch[i]], with
// `average` times 1 / (rows of that item). grad is [num_batches,
// channels], out [n, channels]; batch must be valid (GroupByBatch).
template <typename T>
void GlobalSumPoolGrad(const T* grad, int64_t channels, const int32_t* batch,
                       int64_t n, const int64_t* starts, bool average, T* out,
                       const ParallelFor& parallel_for);

}  // namespace sparse_ops

#endif  // SPARSE_OPS_KERNELS_CORE_POOL_H_
