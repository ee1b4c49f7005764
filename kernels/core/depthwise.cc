#include "kernels/core/depthwise.h"

#include <algorithm>
#include <vector>

#include "kernels/core/isa.h"

namespace sparse_ops {
namespace {

// Pairs per unit of the weight gradient, and output rows per unit of the
// convolution: fixed, so the sums' order does not depend on the thread count.
constexpr int64_t kSegment = 2048;
constexpr int64_t kRowBlock = 128;
constexpr int kLanes = 16;  // channels a row accumulates in registers at once

}  // namespace

template <typename T>
void DepthwiseConv(const T* in, int64_t channels, int64_t multiplier,
                   const T* weights, bool transpose, const KernelMapView& map,
                   int64_t n_out, T* out, const ParallelFor& parallel_for) {
  const int64_t C = channels, M = multiplier, K = map.num_offsets;
  const int64_t in_width = transpose ? C * M : C,
                out_width = transpose ? C : C * M;
  const int64_t blocks = (n_out + kRowBlock - 1) / kRowBlock;
  const int64_t pairs = K > 0 ? map.splits[K] : 0;
  const int64_t cost =
      (pairs / std::max<int64_t>(blocks, 1) + kRowBlock) * C * M * 2;
  // Output-stationary: a block of output rows stays in cache while every
  // offset's pairs into it (a binary search away: each offset's pairs are
  // sorted by output row) are applied, offsets in order.
  VectorizedFor(parallel_for, blocks, cost, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> cursor(K), stop(K);
    std::vector<const T*> xs(K), ws(K);
    for (int64_t b = begin; b < end; ++b) {
      const int32_t o0 = static_cast<int32_t>(b * kRowBlock);
      const int32_t o1 =
          static_cast<int32_t>(std::min(n_out, (b + 1) * kRowBlock));
      if (M == 1) {
        // One row at a time, its terms in registers: the pairs of each
        // offset are walked with a cursor (sorted by output row).
        for (int64_t k = 0; k < K; ++k) {
          const int32_t* rows_begin = map.out_rows + map.splits[k];
          const int32_t* rows_end = map.out_rows + map.splits[k + 1];
          const int32_t* lo = std::lower_bound(rows_begin, rows_end, o0);
          cursor[k] = lo - map.out_rows;
          stop[k] = std::lower_bound(lo, rows_end, o1) - map.out_rows;
        }
        for (int32_t o = o0; o < o1; ++o) {
          int64_t terms = 0;
          for (int64_t k = 0; k < K; ++k) {
            if (cursor[k] < stop[k] && map.out_rows[cursor[k]] == o) {
              xs[terms] = in + int64_t{map.in_rows[cursor[k]]} * in_width;
              ws[terms++] = weights + k * C;
              ++cursor[k];
            }
          }
          T* y = out + int64_t{o} * out_width;
          int64_t c = 0;
          for (; c + kLanes <= C; c += kLanes) {
            T acc[kLanes] = {};
            for (int64_t t = 0; t < terms; ++t) {
              for (int l = 0; l < kLanes; ++l)
                acc[l] += xs[t][c + l] * ws[t][c + l];
            }
            std::copy(acc, acc + kLanes, y + c);
          }
          for (; c < C; ++c) {
            T acc = 0;
            for (int64_t t = 0; t < terms; ++t) acc += xs[t][c] * ws[t][c];
            y[c] = acc;
          }
        }
        continue;
      }
      std::fill(out + o0 * out_width, out + o1 * out_width, T(0));
      for (int64_t k = 0; k < K; ++k) {
        const T* __restrict w = weights + k * C * M;
        const int32_t* rows_begin = map.out_rows + map.splits[k];
        const int32_t* rows_end = map.out_rows + map.splits[k + 1];
        const int32_t* lo = std::lower_bound(rows_begin, rows_end, o0);
        const int32_t* hi = std::lower_bound(lo, rows_end, o1);
        for (int64_t p = lo - map.out_rows; p < hi - map.out_rows; ++p) {
          const T* __restrict x = in + int64_t{map.in_rows[p]} * in_width;
          T* __restrict y = out + int64_t{map.out_rows[p]} * out_width;
          if (!transpose) {
            for (int64_t c = 0; c < C; ++c) {
              for (int64_t m = 0; m < M; ++m)
                y[c * M + m] += x[c] * w[c * M + m];
            }
          } else {
            for (int64_t c = 0; c < C; ++c) {
              T sum = 0;
              for (int64_t m = 0; m < M; ++m)
                sum += x[c * M + m] * w[c * M + m];
              y[c] += sum;
            }
          }
        }
      }
    }
  });
}

template <typename T>
Status DepthwiseConvWeightGradient(const T* in, int64_t channels,
                                   int64_t multiplier, const T* grad_out,
                                   const KernelMapView& map, T* grad_weights,
                                   const Allocate& allocate,
                                   const ParallelFor& parallel_for) {
  const int64_t C = channels, M = multiplier, K = map.num_offsets,
                width = C * M;
  // Units: segments of kSegment pairs within an offset; first[k] = offset k's
  // first.
  std::vector<int64_t> first(K + 1, 0);
  for (int64_t k = 0; k < K; ++k) {
    const int64_t pairs = map.splits[k + 1] - map.splits[k];
    first[k + 1] = first[k] + (pairs + kSegment - 1) / kSegment;
  }
  const int64_t units = first[K];
  T* partial = AllocateArray<T>(allocate, std::max<int64_t>(units * width, 1));
  if (partial == nullptr) {
    return Status::OutOfMemory("depthwise weight gradient: no memory for " +
                               std::to_string(units) + " partial sums");
  }
  VectorizedFor(
      parallel_for, units, kSegment * width * 2,
      [&](int64_t begin, int64_t end) {
        int64_t k = std::upper_bound(first.begin(), first.end(), begin) -
                    first.begin() - 1;
        for (int64_t u = begin; u < end; ++u) {
          while (first[k + 1] <= u) ++k;
          T* acc = partial + u * width;
          std::fill(acc, acc + width, T(0));
          const int64_t lo = map.splits[k] + (u - first[k]) * kSegment;
          const int64_t hi = std::min(map.splits[k + 1], lo + kSegment);
          for (int64_t p = lo; p < hi; ++p) {
            const T* x = in + int64_t{map.in_rows[p]} * C;
            const T* g = grad_out + int64_t{map.out_rows[p]} * width;
            if (M == 1) {
              for (int64_t c = 0; c < C; ++c) acc[c] += x[c] * g[c];
            } else {
              for (int64_t c = 0; c < C; ++c) {
                for (int64_t m = 0; m < M; ++m)
                  acc[c * M + m] += x[c] * g[c * M + m];
              }
            }
          }
        }
      });
  VectorizedFor(parallel_for, K, width * 4, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      T* dw = grad_weights + k * width;
      std::fill(dw, dw + width, T(0));
      for (int64_t u = first[k]; u < first[k + 1]; ++u) {
        const T* acc = partial + u * width;
        for (int64_t j = 0; j < width; ++j) dw[j] += acc[j];
      }
    }
  });
  return Status::Ok();
}

#define SPARSE_OPS_INSTANTIATE(T)                                            \
  template void DepthwiseConv<T>(const T*, int64_t, int64_t, const T*, bool, \
                                 const KernelMapView&, int64_t, T*,          \
                                 const ParallelFor&);                        \
  template Status DepthwiseConvWeightGradient<T>(                            \
      const T*, int64_t, int64_t, const T*, const KernelMapView&, T*,        \
      const Allocate&, const ParallelFor&);
SPARSE_OPS_INSTANTIATE(float)
SPARSE_OPS_INSTANTIATE(double)
#undef SPARSE_OPS_INSTANTIATE

}  // namespace sparse_ops
