// Channel-wise (depthwise) sparse convolution of the framework-free core:
// input channel c is convolved with its own `multiplier` filters, giving
// output channels c * multiplier + m (MinkowskiEngine's channel-wise
// convolution, Keras' DepthwiseConv layout). A per-channel
// gather-multiply-scatter over a kernel map (coordinates.h), forward and
// backward, not a block-diagonal dense kernel.
//
// Deterministic: blocks of output rows are independent units (each
// offset's pairs are sorted by output row, so a block's pairs are a binary
// search away), and each row's terms are added in offset order. The weight
// gradient sums fixed segments of pairs, then the segments of each offset
// in order.
#ifndef SPARSE_OPS_KERNELS_CORE_DEPTHWISE_H_
#define SPARSE_OPS_KERNELS_CORE_DEPTHWISE_H_

#include <cstdint>

#include "kernels/core/allocate.h"
#include "kernels/core/coordinates.h"
#include "kernels/core/parallel.h"
#include "kernels/core/status.h"

namespace sparse_ops {

// W is [K, C, M] (C = channels, M = multiplier).
// transpose == false: out [n_out, C * M], out[o, c * M + m] = sum over pairs
//   (i, o) of offset k of in[i, c] * W[k, c, m] (in is [n_in, C]).
// transpose == true (the input gradient, `map` transposed: its pairs are
//   (o, i) sorted by i): out [n_out, C], out[i, c] = sum over pairs of
//   offset k and over m of in[o, c * M + m] * W[k, c, m].
// Rows without pairs get zeros.
template <typename T>
void DepthwiseConv(const T* in, int64_t channels, int64_t multiplier,
                   const T* weights, bool transpose, const KernelMapView& map,
                   int64_t n_out, T* out, const ParallelFor& parallel_for);

// grad_weights [K, C, M]: the sum over pairs (i, o) of offset k of
// in[i, c] * grad_out[o, c * M + m]. Scratch from `allocate`.
template <typename T>
Status DepthwiseConvWeightGradient(const T* in, int64_t channels,
                                   int64_t multiplier, const T* grad_out,
                                   const KernelMapView& map, T* grad_weights,
                                   const Allocate& allocate,
                                   const ParallelFor& parallel_for);

}  // namespace sparse_ops

#endif  // SPARSE_OPS_KERNELS_CORE_DEPTHWISE_H_
