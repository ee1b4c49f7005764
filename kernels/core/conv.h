// Sparse convolution arithmetic of the framework-free core: fused
// gather-GEMM-scatter over a kernel map (coordinates.h), forward and
// backward. Deterministic: work is split into fixed blocks of output rows
// (or fixed segments of pairs) whatever the thread count, and every sum is
// taken in a fixed order.
#ifndef SPARSE_OPS_KERNELS_CORE_CONV_H_
#define SPARSE_OPS_KERNELS_CORE_CONV_H_

#include <cstdint>

#include "kernels/core/allocate.h"
#include "kernels/core/coordinates.h"
#include "kernels/core/parallel.h"
#include "kernels/core/status.h"

namespace Eigen {
struct bfloat16;
}  // namespace Eigen

namespace sparse_ops {

// How SparseConv treats zero (pruned) weights; every path gives the same
// sums (with AVX2 in float, bit for bit: a zero weight adds nothing to an
// FMA chain). kAuto: offsets whose weights are all zero are skipped; the
// dense product skips an offset's zero input channels and zero 16-column
// tiles; an offset with few enough non-zero weights (below a measured
// crossover) goes to the sparse-weight product (float with AVX2), whose work
// is proportional to its non-zero weights. kDense: the plain dense product
// for every offset, nothing skipped. kSparse: the sparse-weight product for
// every non-empty offset where it exists (benchmarks and tests).
enum class WeightPath { kAuto, kDense, kSparse };

// out[o] = sum over pairs (i, o) of offset k of in[i] . W_k, for all n_out
// rows (rows without pairs get zeros). W is [K, c_in, c_out] row-major; with
// transpose_weights it is [K, c_out, c_in] and W_k^T is used instead (the
// input gradient of a convolution, and the transposed convolution).
// `map` must be sorted by output row within each offset.
template <typename T>
void SparseConv(const T* in, int64_t c_in, const T* weights, int64_t c_out,
                bool transpose_weights, const KernelMapView& map, int64_t n_out,
                T* out, const ParallelFor& parallel_for,
                WeightPath path = WeightPath::kAuto);

// SparseConv in bfloat16 (Keras' mixed_bfloat16), for n_in input rows:
// products of bfloat16 values (exact in float), float sums, each output
// rounded once to bfloat16 (nearest even). Where the bfloat16 dot products
// pay (isa.h) they read the rows as they are; otherwise the rows are widened
// to float once, in memory from `allocate` (OutOfMemory without it), and
// take the float kernels, pruned-weight skips included.
Status SparseConvBfloat16(const Eigen::bfloat16* in, int64_t n_in, int64_t c_in,
                          const Eigen::bfloat16* weights, int64_t c_out,
                          bool transpose_weights, const KernelMapView& map,
                          int64_t n_out, Eigen::bfloat16* out,
                          const Allocate& allocate,
                          const ParallelFor& parallel_for,
                          WeightPath path = WeightPath::kAuto);

// grad_weights[k] = sum over pairs (i, o) of offset k of in[i]^T grad_out[o],
// [K, c_in, c_out]. scratch holds WeightGradientScratchSize(...) elements
// (partial sums of fixed segments of pairs).
template <typename T>
void SparseConvWeightGradient(const T* in, int64_t c_in, const T* grad_out,
                              int64_t c_out, const KernelMapView& map,
                              T* grad_weights, T* scratch,
                              const ParallelFor& parallel_for);
int64_t WeightGradientScratchSize(const KernelMapView& map, int64_t c_in,
                                  int64_t c_out);

}  // namespace sparse_ops

#endif  // SPARSE_OPS_KERNELS_CORE_CONV_H_
