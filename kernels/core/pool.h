// Sparse max pooling of the framework-free core over a kernel map
// (coordinates.h). Sum and average pooling need no kernel of their own (the
// Python layer reduces the map's pairs with segment sums).
//
// Deterministic: the offsets are visited in order, and within one offset
// every output row occurs at most once (the map is strictly increasing in
// output row within an offset), so the pairs of one offset are split into
// fixed blocks that never touch the same output row.
#ifndef SPARSE_OPS_KERNELS_CORE_POOL_H_
#define SPARSE_OPS_KERNELS_CORE_POOL_H_

#include <cstdint>

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

}  // namespace sparse_ops

#endif  // SPARSE_OPS_KERNELS_CORE_POOL_H_
