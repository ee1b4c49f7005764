#include "kernels/core/conv.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "Eigen/Core"

namespace sparse_ops {
namespace {

template <typename T>
using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename T>
using MatrixMap = Eigen::Map<Matrix<T>>;
template <typename T>
using ConstMatrixMap = Eigen::Map<const Matrix<T>>;

// Output rows per block: the block's accumulator and gathered rows stay in
// the L2 cache while every offset is applied to it.
constexpr int64_t kBlockRows = 256;
// Pairs per chunk of the weight gradient's gather.
constexpr int64_t kChunkPairs = 256;

// Index of the first pair in [begin, end) whose output row is >= row.
int64_t LowerBound(const int32_t* out_rows, int64_t begin, int64_t end,
                   int64_t row) {
  return std::lower_bound(out_rows + begin, out_rows + end, row) - out_rows;
}

}  // namespace

template <typename T>
void SparseConv(const T* in, int64_t c_in, const T* weights, int64_t c_out,
                bool transpose_weights, const KernelMapView& map,
                int64_t n_out, T* out, const ParallelFor& parallel_for) {
  const int64_t K = map.num_offsets;
  const int64_t num_blocks = (n_out + kBlockRows - 1) / kBlockRows;
  const int64_t pairs = map.splits[K];
  const int64_t cost =
      n_out > 0 ? (pairs / std::max<int64_t>(num_blocks, 1) + 1) * c_in *
                      c_out
                : 1;
  parallel_for(num_blocks, cost, [&](int64_t begin, int64_t end) {
    Matrix<T> gathered(kBlockRows, c_in), product(kBlockRows, c_out);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t o0 = b * kBlockRows;
      const int64_t rows = std::min(kBlockRows, n_out - o0);
      MatrixMap<T> acc(out + o0 * c_out, rows, c_out);
      acc.setZero();
      for (int64_t k = 0; k < K; ++k) {
        const int64_t p0 = LowerBound(map.out_rows, map.splits[k],
                                      map.splits[k + 1], o0);
        const int64_t p1 = LowerBound(map.out_rows, p0, map.splits[k + 1],
                                      o0 + rows);
        const int64_t m = p1 - p0;
        if (m == 0) continue;
        for (int64_t r = 0; r < m; ++r) {
          std::memcpy(gathered.data() + r * c_in,
                      in + static_cast<int64_t>(map.in_rows[p0 + r]) * c_in,
                      c_in * sizeof(T));
        }
        auto lhs = gathered.topRows(m);
        auto res = product.topRows(m);
        if (transpose_weights) {
          res.noalias() =
              lhs * ConstMatrixMap<T>(weights + k * c_in * c_out, c_out, c_in)
                        .transpose();
        } else {
          res.noalias() =
              lhs * ConstMatrixMap<T>(weights + k * c_in * c_out, c_in, c_out);
        }
        for (int64_t r = 0; r < m; ++r) {
          acc.row(map.out_rows[p0 + r] - o0) += res.row(r);
        }
      }
    }
  });
}

template <typename T>
void SparseConvWeightGradient(const T* in, int64_t c_in, const T* grad_out,
                              int64_t c_out, const KernelMapView& map,
                              T* grad_weights,
                              const ParallelFor& parallel_for) {
  const int64_t K = map.num_offsets;
  const int64_t pairs = map.splits[K];
  // Each offset's pairs are cut into segments of a size fixed by the input
  // alone; segment partial sums are added in order, so results do not
  // depend on the thread count.
  const int64_t segment = std::max<int64_t>(4 * kChunkPairs, pairs / 64 + 1);
  std::vector<int64_t> first_segment(K + 1, 0);
  for (int64_t k = 0; k < K; ++k) {
    const int64_t n = map.splits[k + 1] - map.splits[k];
    first_segment[k + 1] = first_segment[k] + (n + segment - 1) / segment;
  }
  const int64_t num_segments = first_segment[K];
  const int64_t wsize = c_in * c_out;
  std::vector<T> partial(num_segments * wsize);
  std::vector<int64_t> segment_offset(num_segments);
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t s = first_segment[k]; s < first_segment[k + 1]; ++s) {
      segment_offset[s] = k;
    }
  }
  parallel_for(num_segments, segment * wsize, [&](int64_t begin, int64_t end) {
    Matrix<T> x(kChunkPairs, c_in), g(kChunkPairs, c_out);
    for (int64_t s = begin; s < end; ++s) {
      const int64_t k = segment_offset[s];
      const int64_t p_begin =
          map.splits[k] + (s - first_segment[k]) * segment;
      const int64_t p_end = std::min(map.splits[k + 1], p_begin + segment);
      MatrixMap<T> acc(partial.data() + s * wsize, c_in, c_out);
      acc.setZero();
      for (int64_t p0 = p_begin; p0 < p_end; p0 += kChunkPairs) {
        const int64_t m = std::min(kChunkPairs, p_end - p0);
        for (int64_t r = 0; r < m; ++r) {
          std::memcpy(x.data() + r * c_in,
                      in + static_cast<int64_t>(map.in_rows[p0 + r]) * c_in,
                      c_in * sizeof(T));
          std::memcpy(
              g.data() + r * c_out,
              grad_out + static_cast<int64_t>(map.out_rows[p0 + r]) * c_out,
              c_out * sizeof(T));
        }
        acc.noalias() += x.topRows(m).transpose() * g.topRows(m);
      }
    }
  });
  parallel_for(K, (num_segments / std::max<int64_t>(K, 1) + 1) * wsize,
               [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      MatrixMap<T> dw(grad_weights + k * wsize, c_in, c_out);
      dw.setZero();
      for (int64_t s = first_segment[k]; s < first_segment[k + 1]; ++s) {
        dw += ConstMatrixMap<T>(partial.data() + s * wsize, c_in, c_out);
      }
    }
  });
}

#define SPARSE_OPS_INSTANTIATE(T)                                            \
  template void SparseConv<T>(const T*, int64_t, const T*, int64_t, bool,    \
                              const KernelMapView&, int64_t, T*,             \
                              const ParallelFor&);                           \
  template void SparseConvWeightGradient<T>(const T*, int64_t, const T*,     \
                                            int64_t, const KernelMapView&,   \
                                            T*, const ParallelFor&);
SPARSE_OPS_INSTANTIATE(float)
SPARSE_OPS_INSTANTIATE(double)
#undef SPARSE_OPS_INSTANTIATE

}  // namespace sparse_ops
