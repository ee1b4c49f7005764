#include "kernels/core/conv.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "Eigen/Core"

#if defined(__AVX2__) && defined(__FMA__) && !defined(SPARSE_OPS_NO_AVX2)
#include <immintrin.h>
#define SPARSE_OPS_AVX2 1
#endif

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
constexpr int64_t kChunkPairs = 64;

// Index of the first pair in [begin, end) whose output row is >= row.
int64_t LowerBound(const int32_t* out_rows, int64_t begin, int64_t end,
                   int64_t row) {
  return std::lower_bound(out_rows + begin, out_rows + end, row) - out_rows;
}

}  // namespace

// dst[r] = src[rows[r]] for r < m: rows of `cols` values gathered into a
// contiguous block.
template <typename T>
void GatherRows(const T* src, int64_t cols, const int32_t* rows, int64_t m,
                T* dst) {
  for (int64_t r = 0; r < m; ++r) {
    std::memcpy(dst + r * cols, src + static_cast<int64_t>(rows[r]) * cols,
                cols * sizeof(T));
  }
}

// Products of one offset's pairs: acc[out_rows[r] - o0] += in[in_rows[r]] . W
// for r < m, with W [c_in, c_out] row-major and acc the block accumulator.
// The generic version gathers the rows and lets Eigen multiply.
template <typename T>
class EigenPairProduct {
 public:
  EigenPairProduct(int64_t c_in, int64_t c_out)
      : c_in_(c_in), c_out_(c_out), gathered_(kBlockRows, c_in),
        product_(kBlockRows, c_out) {}

  void operator()(const T* in, const T* w, const int32_t* in_rows,
                  const int32_t* out_rows, int64_t m, int64_t o0, T* acc) {
    GatherRows(in, c_in_, in_rows, m, gathered_.data());
    auto res = product_.topRows(m);
    res.noalias() = gathered_.topRows(m) * ConstMatrixMap<T>(w, c_in_, c_out_);
    MatrixMap<T> block(acc, kBlockRows, c_out_);
    for (int64_t r = 0; r < m; ++r) block.row(out_rows[r] - o0) += res.row(r);
  }

 private:
  int64_t c_in_, c_out_;
  Matrix<T> gathered_, product_;
};

#ifdef SPARSE_OPS_AVX2
// float with AVX2 + FMA, c_out a multiple of 8: a register-tiled kernel that
// reads input rows in place (no gather copy) and adds each tile straight
// into the accumulator. Every output value is one FMA chain over the input
// channels in order, so results do not depend on how pairs form tiles.
class Avx2PairProduct {
 public:
  static bool Supports(int64_t c_out) { return c_out % 8 == 0; }
  Avx2PairProduct(int64_t c_in, int64_t c_out) : c_in_(c_in), c_out_(c_out) {}

  void operator()(const float* in, const float* w, const int32_t* in_rows,
                  const int32_t* out_rows, int64_t m, int64_t o0, float* acc) {
    const float* x[kTileRows];
    float* dst[kTileRows];
    int64_t r = 0;
    for (; r + kTileRows <= m; r += kTileRows) {
      Pointers(in, in_rows + r, out_rows + r, kTileRows, o0, acc, x, dst);
      Rows<kTileRows>(x, w, dst);
    }
    const int rest = static_cast<int>(m - r);
    Pointers(in, in_rows + r, out_rows + r, rest, o0, acc, x, dst);
    switch (rest) {
      case 5: Rows<5>(x, w, dst); break;
      case 4: Rows<4>(x, w, dst); break;
      case 3: Rows<3>(x, w, dst); break;
      case 2: Rows<2>(x, w, dst); break;
      case 1: Rows<1>(x, w, dst); break;
      default: break;
    }
  }

 private:
  static constexpr int kTileRows = 6;  // 6 x 2 accumulators + 3 = 15 ymm

  void Pointers(const float* in, const int32_t* in_rows,
                const int32_t* out_rows, int rows, int64_t o0, float* acc,
                const float** x, float** dst) const {
    for (int r = 0; r < rows; ++r) {
      x[r] = in + static_cast<int64_t>(in_rows[r]) * c_in_;
      dst[r] = acc + (out_rows[r] - o0) * c_out_;
    }
  }

  template <int kRows>
  void Rows(const float* const* x, const float* w, float* const* dst) const {
    int64_t j = 0;
    for (; j + 16 <= c_out_; j += 16) Tile<kRows, 2>(x, w, j, dst);
    if (j < c_out_) Tile<kRows, 1>(x, w, j, dst);
  }

  template <int kRows, int kVectors>
  void Tile(const float* const* x, const float* w, int64_t j,
            float* const* dst) const {
    __m256 c[kRows][kVectors];
    for (int r = 0; r < kRows; ++r) {
      for (int v = 0; v < kVectors; ++v) c[r][v] = _mm256_setzero_ps();
    }
    for (int64_t k = 0; k < c_in_; ++k) {
      __m256 wv[kVectors];
      for (int v = 0; v < kVectors; ++v) {
        wv[v] = _mm256_loadu_ps(w + k * c_out_ + j + 8 * v);
      }
      for (int r = 0; r < kRows; ++r) {
        const __m256 xb = _mm256_broadcast_ss(x[r] + k);
        for (int v = 0; v < kVectors; ++v) {
          c[r][v] = _mm256_fmadd_ps(xb, wv[v], c[r][v]);
        }
      }
    }
    for (int r = 0; r < kRows; ++r) {
      for (int v = 0; v < kVectors; ++v) {
        float* d = dst[r] + j + 8 * v;
        _mm256_storeu_ps(d, _mm256_add_ps(_mm256_loadu_ps(d), c[r][v]));
      }
    }
  }

  int64_t c_in_, c_out_;
};
#endif  // SPARSE_OPS_AVX2

// The block loop of SparseConv with a given pair product.
template <typename T, typename Product>
void ConvBlocks(const T* in, int64_t c_in, const T* weights, int64_t c_out,
                const KernelMapView& map, int64_t n_out, T* out,
                const ParallelFor& parallel_for) {
  const int64_t K = map.num_offsets;
  const int64_t num_blocks = (n_out + kBlockRows - 1) / kBlockRows;
  const int64_t pairs = map.splits[K];
  const int64_t cost =
      (pairs / std::max<int64_t>(num_blocks, 1) + 1) * c_in * c_out;
  parallel_for(num_blocks, cost, [&](int64_t begin, int64_t end) {
    Product product(c_in, c_out);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t o0 = b * kBlockRows;
      const int64_t rows = std::min(kBlockRows, n_out - o0);
      T* acc = out + o0 * c_out;  // the block's rows of out, L2-resident
      std::fill(acc, acc + rows * c_out, T(0));
      for (int64_t k = 0; k < K; ++k) {
        const int64_t p0 = LowerBound(map.out_rows, map.splits[k],
                                      map.splits[k + 1], o0);
        const int64_t p1 = LowerBound(map.out_rows, p0, map.splits[k + 1],
                                      o0 + rows);
        if (p1 == p0) continue;
        product(in, weights + k * c_in * c_out, map.in_rows + p0,
                map.out_rows + p0, p1 - p0, o0, acc);
      }
    }
  });
}

template <typename T>
void SparseConv(const T* in, int64_t c_in, const T* weights, int64_t c_out,
                bool transpose_weights, const KernelMapView& map,
                int64_t n_out, T* out, const ParallelFor& parallel_for) {
  const int64_t K = map.num_offsets;
  std::vector<T> transposed;
  if (transpose_weights) {  // [K, c_out, c_in] -> [K, c_in, c_out]; small
    transposed.resize(K * c_in * c_out);
    for (int64_t k = 0; k < K; ++k) {
      MatrixMap<T>(transposed.data() + k * c_in * c_out, c_in, c_out) =
          ConstMatrixMap<T>(weights + k * c_in * c_out, c_out, c_in)
              .transpose();
    }
    weights = transposed.data();
  }
#ifdef SPARSE_OPS_AVX2
  if constexpr (std::is_same_v<T, float>) {
    if (Avx2PairProduct::Supports(c_out)) {
      ConvBlocks<float, Avx2PairProduct>(in, c_in, weights, c_out, map, n_out,
                                         out, parallel_for);
      return;
    }
  }
#endif
  ConvBlocks<T, EigenPairProduct<T>>(in, c_in, weights, c_out, map, n_out,
                                     out, parallel_for);
}

// Outer products of a run of pairs: acc [c_in, c_out] +=
// sum_r in[in_rows[r]]^T grad[out_rows[r]] for r < m. The generic version
// gathers the rows and lets Eigen multiply.
template <typename T>
class EigenOuterProducts {
 public:
  EigenOuterProducts(int64_t c_in, int64_t c_out)
      : c_in_(c_in), c_out_(c_out), x_(kChunkPairs, c_in), g_(kChunkPairs, c_out) {}

  void operator()(const T* in, const T* grad, const int32_t* in_rows,
                  const int32_t* out_rows, int64_t m, T* acc) {
    GatherRows(in, c_in_, in_rows, m, x_.data());
    GatherRows(grad, c_out_, out_rows, m, g_.data());
    MatrixMap<T>(acc, c_in_, c_out_).noalias() +=
        x_.topRows(m).transpose() * g_.topRows(m);
  }

 private:
  int64_t c_in_, c_out_;
  Matrix<T> x_, g_;
};

#ifdef SPARSE_OPS_AVX2
// float with AVX2 + FMA, c_out a multiple of 8: register tiles of acc (6
// input channels x 16 output channels) accumulate over the pairs in order,
// reading the rows in place. Each acc value is one FMA chain over the pairs.
class Avx2OuterProducts {
 public:
  static bool Supports(int64_t c_out) { return c_out % 8 == 0; }
  Avx2OuterProducts(int64_t c_in, int64_t c_out)
      : c_in_(c_in), c_out_(c_out), x_(kChunkPairs * c_in), g_(kChunkPairs * c_out) {}

  void operator()(const float* in, const float* grad, const int32_t* in_rows,
                  const int32_t* out_rows, int64_t m, float* acc) {
    // Contiguous copies: the tiles below sweep the chunk many times.
    GatherRows(in, c_in_, in_rows, m, x_.data());
    GatherRows(grad, c_out_, out_rows, m, g_.data());
    int64_t a = 0;
    for (; a + kTileRows <= c_in_; a += kTileRows) Columns<kTileRows>(m, a, acc);
    switch (c_in_ - a) {
      case 5: Columns<5>(m, a, acc); break;
      case 4: Columns<4>(m, a, acc); break;
      case 3: Columns<3>(m, a, acc); break;
      case 2: Columns<2>(m, a, acc); break;
      case 1: Columns<1>(m, a, acc); break;
      default: break;
    }
  }

 private:
  static constexpr int kTileRows = 6;

  template <int kRows>
  void Columns(int64_t m, int64_t a, float* acc) const {
    int64_t j = 0;
    for (; j + 16 <= c_out_; j += 16) Tile<kRows, 2>(m, a, j, acc);
    if (j < c_out_) Tile<kRows, 1>(m, a, j, acc);
  }

  template <int kRows, int kVectors>
  void Tile(int64_t m, int64_t a, int64_t j, float* acc) const {
    __m256 c[kRows][kVectors];
    for (int r = 0; r < kRows; ++r) {
      for (int v = 0; v < kVectors; ++v) {
        c[r][v] = _mm256_loadu_ps(acc + (a + r) * c_out_ + j + 8 * v);
      }
    }
    const float* x = x_.data() + a;
    const float* g = g_.data() + j;
    for (int64_t p = 0; p < m; ++p, x += c_in_, g += c_out_) {
      __m256 gv[kVectors];
      for (int v = 0; v < kVectors; ++v) gv[v] = _mm256_loadu_ps(g + 8 * v);
      for (int r = 0; r < kRows; ++r) {
        const __m256 xb = _mm256_broadcast_ss(x + r);
        for (int v = 0; v < kVectors; ++v) {
          c[r][v] = _mm256_fmadd_ps(xb, gv[v], c[r][v]);
        }
      }
    }
    for (int r = 0; r < kRows; ++r) {
      for (int v = 0; v < kVectors; ++v) {
        _mm256_storeu_ps(acc + (a + r) * c_out_ + j + 8 * v, c[r][v]);
      }
    }
  }

  int64_t c_in_, c_out_;
  std::vector<float> x_, g_;
};
#endif  // SPARSE_OPS_AVX2

// SparseConvWeightGradient with a given outer-product accumulator.
// Each offset's pairs are cut into segments of a size fixed by the input
// alone; segment partial sums are added in order, so results do not depend
// on the thread count. first_segment[k] = index of offset k's first segment.
std::vector<int64_t> WeightGradientSegments(const KernelMapView& map,
                                            int64_t* segment) {
  const int64_t K = map.num_offsets;
  *segment = std::max<int64_t>(4 * kChunkPairs, map.splits[K] / 64 + 1);
  std::vector<int64_t> first_segment(K + 1, 0);
  for (int64_t k = 0; k < K; ++k) {
    const int64_t n = map.splits[k + 1] - map.splits[k];
    first_segment[k + 1] = first_segment[k] + (n + *segment - 1) / *segment;
  }
  return first_segment;
}

template <typename T, typename Outer>
void WeightGradient(const T* in, int64_t c_in, const T* grad_out,
                    int64_t c_out, const KernelMapView& map, T* grad_weights,
                    T* partial, const ParallelFor& parallel_for) {
  const int64_t K = map.num_offsets;
  int64_t segment;
  const std::vector<int64_t> first_segment = WeightGradientSegments(map, &segment);
  const int64_t num_segments = first_segment[K];
  const int64_t wsize = c_in * c_out;
  std::vector<int64_t> segment_offset(num_segments);
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t s = first_segment[k]; s < first_segment[k + 1]; ++s) {
      segment_offset[s] = k;
    }
  }
  parallel_for(num_segments, segment * wsize, [&](int64_t begin, int64_t end) {
    Outer outer(c_in, c_out);
    for (int64_t s = begin; s < end; ++s) {
      const int64_t k = segment_offset[s];
      const int64_t p_begin =
          map.splits[k] + (s - first_segment[k]) * segment;
      const int64_t p_end = std::min(map.splits[k + 1], p_begin + segment);
      T* acc = partial + s * wsize;
      std::fill(acc, acc + wsize, T(0));
      // Chunks keep the rows a chunk touches in the L1/L2 cache.
      for (int64_t p0 = p_begin; p0 < p_end; p0 += kChunkPairs) {
        outer(in, grad_out, map.in_rows + p0, map.out_rows + p0,
              std::min(kChunkPairs, p_end - p0), acc);
      }
    }
  });
  parallel_for(K, (num_segments / std::max<int64_t>(K, 1) + 1) * wsize,
               [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      MatrixMap<T> dw(grad_weights + k * wsize, c_in, c_out);
      dw.setZero();
      for (int64_t s = first_segment[k]; s < first_segment[k + 1]; ++s) {
        dw += ConstMatrixMap<T>(partial + s * wsize, c_in, c_out);
      }
    }
  });
}

int64_t WeightGradientScratchSize(const KernelMapView& map, int64_t c_in,
                                  int64_t c_out) {
  int64_t segment;
  return WeightGradientSegments(map, &segment)[map.num_offsets] * c_in * c_out;
}

template <typename T>
void SparseConvWeightGradient(const T* in, int64_t c_in, const T* grad_out,
                              int64_t c_out, const KernelMapView& map,
                              T* grad_weights, T* scratch,
                              const ParallelFor& parallel_for) {
#ifdef SPARSE_OPS_AVX2
  if constexpr (std::is_same_v<T, float>) {
    if (Avx2OuterProducts::Supports(c_out)) {
      WeightGradient<float, Avx2OuterProducts>(in, c_in, grad_out, c_out, map,
                                               grad_weights, scratch,
                                               parallel_for);
      return;
    }
  }
#endif
  WeightGradient<T, EigenOuterProducts<T>>(in, c_in, grad_out, c_out, map,
                                           grad_weights, scratch, parallel_for);
}

#define SPARSE_OPS_INSTANTIATE(T)                                            \
  template void SparseConv<T>(const T*, int64_t, const T*, int64_t, bool,    \
                              const KernelMapView&, int64_t, T*,             \
                              const ParallelFor&);                           \
  template void SparseConvWeightGradient<T>(const T*, int64_t, const T*,     \
                                            int64_t, const KernelMapView&,   \
                                            T*, T*, const ParallelFor&);
SPARSE_OPS_INSTANTIATE(float)
SPARSE_OPS_INSTANTIATE(double)
#undef SPARSE_OPS_INSTANTIATE

}  // namespace sparse_ops
