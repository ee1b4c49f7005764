#include "kernels/core/conv.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "Eigen/Core"
#include "kernels/core/isa.h"

// The vector kernels are compiled with per-function target attributes
// (isa.h), whatever the build's -march, and picked at run time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(SPARSE_OPS_NO_AVX2)
#include <immintrin.h>
#define SPARSE_OPS_AVX2 1
#endif

namespace sparse_ops {
namespace {

template <typename T>
using Matrix =
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename T>
using MatrixMap = Eigen::Map<Matrix<T>>;
template <typename T>
using ConstMatrixMap = Eigen::Map<const Matrix<T>>;
template <typename T>
using ArrayMap = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
template <typename T>
using ConstArrayMap = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;

using bfloat16 = Eigen::bfloat16;

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

// Output columns per tile of the dense products (two AVX2 vectors).
constexpr int64_t kColumnTile = 16;
// Pairs per tile of the sparse-weight product (eight AVX2 vectors).
constexpr int64_t kPairTile = 64;
// kAuto's cost model per pair of an offset, in units of one weight of the
// dense product: the dense product touches every weight of its non-zero
// rows and column tiles; the sparse-weight product costs kSparseWeightCost
// per non-zero weight plus kTransposeCost per input and output channel (the
// transposed gather and add). Fitted on the benchmark shell
// (docs/benchmarks.md, "Workload"), 64 -> 64 channels, AVX2
// (python/benchmarks/pruning_benchmark.py: the sparse product takes
// 0.45-0.5x the dense one's time at filter density 0.1, 1.9x at 1): the
// crossover there is at a filter density of about 0.45.
constexpr double kSparseWeightCost = 1.6;
constexpr double kTransposeCost = 9.3;
// With AVX-512 the dense product gains more than the sparse one (whose
// transposes stay 8 wide): the same benchmark puts the crossover at about
// 0.25-0.35, so the sparse costs are scaled by this.
constexpr double kAvx512SparseCostScale = 1.35;

}  // namespace

// Where the non-zero weights of each offset are and which product takes the
// offset. Built once per call from W [K, c_in, c_out]; small next to the
// convolution (K * c_in * c_out reads).
template <typename T>
struct WeightPlan {
  enum Kind : uint8_t { kSkip, kDense, kSparse };
  std::vector<uint8_t> kind;  // [K]
  // Dense product: offset k's input channels with a non-zero weight are
  // rows[row_start[k] .. row_start[k + 1]); tiles[k * n_tiles + t] says
  // whether column tile t has one.
  std::vector<int32_t> rows;
  std::vector<int64_t> row_start;
  std::vector<uint8_t> tiles;
  int64_t n_tiles = 0;
  // Sparse product: offset k's non-zero weights by output column (CSC):
  // column j's entries are [col_start[k * (c_out + 1) + j], ... + j + 1),
  // in increasing input channel; entry_row is the channel times kPairTile
  // (its row in the transposed tile of inputs).
  std::vector<int64_t> col_start;
  std::vector<int32_t> entry_row;
  std::vector<T> entry_value;
};

template <typename T>
WeightPlan<T> PlanWeights(const T* w, int64_t K, int64_t c_in, int64_t c_out,
                          WeightPath path, bool has_sparse_product,
                          double sparse_cost_scale = 1.0) {
  WeightPlan<T> plan;
  plan.n_tiles = (c_out + kColumnTile - 1) / kColumnTile;
  plan.kind.assign(K, WeightPlan<T>::kDense);
  plan.row_start.assign(K + 1, 0);
  plan.tiles.assign(K * plan.n_tiles, 1);
  plan.col_start.assign(K * (c_out + 1), 0);
  for (int64_t k = 0; k < K; ++k) {
    const T* wk = w + k * c_in * c_out;
    uint8_t* tiles = plan.tiles.data() + k * plan.n_tiles;
    int64_t nnz = 0;
    if (path != WeightPath::kDense) std::fill(tiles, tiles + plan.n_tiles, 0);
    for (int64_t i = 0; i < c_in; ++i) {
      bool any = path == WeightPath::kDense;
      for (int64_t j = 0; j < c_out; ++j) {
        if (wk[i * c_out + j] != T(0)) {  // NaN counts as non-zero
          any = true;
          ++nnz;
          tiles[j / kColumnTile] = 1;
        }
      }
      if (any) plan.rows.push_back(static_cast<int32_t>(i));
    }
    plan.row_start[k + 1] = plan.rows.size();
    if (path == WeightPath::kDense) continue;
    const int64_t active_rows = plan.row_start[k + 1] - plan.row_start[k];
    const int64_t active_tiles =
        std::count(tiles, tiles + plan.n_tiles, uint8_t{1});
    const double dense_cost = static_cast<double>(active_rows) *
                              std::min(c_out, active_tiles * kColumnTile);
    const double sparse_cost =
        sparse_cost_scale *
        (kSparseWeightCost * nnz + kTransposeCost * (c_in + c_out));
    if (nnz == 0) {
      plan.kind[k] = WeightPlan<T>::kSkip;
    } else if (has_sparse_product &&
               (path == WeightPath::kSparse || sparse_cost < dense_cost)) {
      plan.kind[k] = WeightPlan<T>::kSparse;
    }
  }
  // CSC entries of the sparse offsets, columns in order, rows increasing.
  for (int64_t k = 0; k < K; ++k) {
    int64_t* cols = plan.col_start.data() + k * (c_out + 1);
    cols[0] = plan.entry_row.size();
    const T* wk = w + k * c_in * c_out;
    for (int64_t j = 0; j < c_out; ++j) {
      if (plan.kind[k] == WeightPlan<T>::kSparse) {
        for (int64_t i = 0; i < c_in; ++i) {
          if (wk[i * c_out + j] != T(0)) {
            plan.entry_row.push_back(static_cast<int32_t>(i * kPairTile));
            plan.entry_value.push_back(wk[i * c_out + j]);
          }
        }
      }
      cols[j + 1] = plan.entry_row.size();
    }
  }
  return plan;
}

// The non-zero input channels and column tiles of one offset, for the
// dense products.
struct ActiveWeights {
  const int32_t* rows;
  int64_t n_rows;
  const uint8_t* tiles;
};

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

// Calls body(std::integral_constant<int, kRows>{}, r) for consecutive groups
// [r, r + kRows) of [0, n): groups of kTile, then the rest as one group, so
// that the register tiles' row counts are compile-time constants.
template <int kTile, typename Body>
inline void ForRowGroups(int64_t n, Body&& body) {
  static_assert(kTile <= 6, "the rest is dispatched up to 5 rows");
  int64_t r = 0;
  for (; r + kTile <= n; r += kTile)
    body(std::integral_constant<int, kTile>{}, r);
  switch (n - r) {
    case 5: body(std::integral_constant<int, 5>{}, r); break;
    case 4: body(std::integral_constant<int, 4>{}, r); break;
    case 3: body(std::integral_constant<int, 3>{}, r); break;
    case 2: body(std::integral_constant<int, 2>{}, r); break;
    case 1: body(std::integral_constant<int, 1>{}, r); break;
    default: break;
  }
}

// Calls tile(j, std::integral_constant<int, V>{}) for the runs of up to
// four active 16-column tiles of [0, c_out), the AVX-512 products' register
// tiles (V vectors from column j); tiles with no non-zero weight are skipped.
template <typename TileFn>
inline void ForActiveTileRuns(const uint8_t* tiles, int64_t c_out,
                              TileFn&& tile) {
  int64_t j = 0;
  while (j < c_out) {
    if (!tiles[j / kColumnTile]) {
      j += 16;
      continue;
    }
    int vectors = 1;
    while (vectors < 4 && j + 16 * vectors < c_out &&
           tiles[(j + 16 * vectors) / kColumnTile]) {
      ++vectors;
    }
    switch (vectors) {
      case 4: tile(j, std::integral_constant<int, 4>{}); break;
      case 3: tile(j, std::integral_constant<int, 3>{}); break;
      case 2: tile(j, std::integral_constant<int, 2>{}); break;
      default: tile(j, std::integral_constant<int, 1>{}); break;
    }
    j += 16 * vectors;
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
                  const int32_t* out_rows, int64_t m, int64_t o0,
                  const ActiveWeights& /*all weights are used*/, T* acc) {
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

  SPARSE_OPS_TARGET_AVX2
  void operator()(const float* in, const float* w, const int32_t* in_rows,
                  const int32_t* out_rows, int64_t m, int64_t o0,
                  const ActiveWeights& active, float* acc) {
    if (active.n_rows == c_in_) {
      Pairs<false>(in, w, in_rows, out_rows, m, o0, active, acc);
    } else {
      Pairs<true>(in, w, in_rows, out_rows, m, o0, active, acc);
    }
  }

 private:
  static constexpr int kTileRows = 6;  // 6 x 2 accumulators + 3 = 15 ymm

  // kSomeRows: only the input channels listed in active.rows (the others
  // have zero weights in this offset).
  template <bool kSomeRows>
  SPARSE_OPS_TARGET_AVX2
  void Pairs(const float* in, const float* w, const int32_t* in_rows,
             const int32_t* out_rows, int64_t m, int64_t o0,
             const ActiveWeights& active, float* acc) const {
    ForRowGroups<kTileRows>(m, [&](auto rows, int64_t r) {
      constexpr int kRows = decltype(rows)::value;
      const float* x[kRows];
      float* dst[kRows];
      Pointers(in, in_rows + r, out_rows + r, kRows, o0, acc, x, dst);
      Rows<kRows, kSomeRows>(x, w, active, dst);
    });
  }

  SPARSE_OPS_TARGET_AVX2
  void Pointers(const float* in, const int32_t* in_rows,
                const int32_t* out_rows, int rows, int64_t o0, float* acc,
                const float** x, float** dst) const {
    for (int r = 0; r < rows; ++r) {
      x[r] = in + static_cast<int64_t>(in_rows[r]) * c_in_;
      dst[r] = acc + (out_rows[r] - o0) * c_out_;
    }
  }

  // Column tiles with no non-zero weight add nothing and are skipped.
  template <int kRows, bool kSomeRows>
  SPARSE_OPS_TARGET_AVX2
  void Rows(const float* const* x, const float* w, const ActiveWeights& active,
            float* const* dst) const {
    int64_t j = 0;
    for (; j + 16 <= c_out_; j += 16) {
      if (active.tiles[j / kColumnTile]) {
        Tile<kRows, 2, kSomeRows>(x, w, j, active, dst);
      }
    }
    if (j < c_out_ && active.tiles[j / kColumnTile]) {
      Tile<kRows, 1, kSomeRows>(x, w, j, active, dst);
    }
  }

  template <int kRows, int kVectors, bool kSomeRows>
  SPARSE_OPS_TARGET_AVX2
  void Tile(const float* const* x, const float* w, int64_t j,
            const ActiveWeights& active, float* const* dst) const {
    __m256 c[kRows][kVectors];
    for (int r = 0; r < kRows; ++r) {
      for (int v = 0; v < kVectors; ++v) c[r][v] = _mm256_setzero_ps();
    }
    const int64_t n = kSomeRows ? active.n_rows : c_in_;
    for (int64_t t = 0; t < n; ++t) {
      const int64_t k = kSomeRows ? active.rows[t] : t;
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

// The same products with AVX-512, c_out a multiple of 16: tiles of 6 rows x
// up to 64 columns (24 accumulators), so each broadcast input value feeds
// four FMAs. Each output value is the same FMA chain as Avx2PairProduct's,
// so the two agree bit for bit. Every member is compiled for AVX-512 and
// runs only when ActiveIsa() says the CPU has it.
class Avx512PairProduct {
 public:
  static bool Supports(int64_t c_out) { return c_out % 16 == 0; }
  Avx512PairProduct(int64_t c_in, int64_t c_out) : c_in_(c_in), c_out_(c_out) {}

  SPARSE_OPS_TARGET_AVX512
  void operator()(const float* in, const float* w, const int32_t* in_rows,
                  const int32_t* out_rows, int64_t m, int64_t o0,
                  const ActiveWeights& active, float* acc) {
    if (active.n_rows == c_in_) {
      Pairs<false>(in, w, in_rows, out_rows, m, o0, active, acc);
    } else {
      Pairs<true>(in, w, in_rows, out_rows, m, o0, active, acc);
    }
  }

 private:
  static constexpr int kTileRows = 6;  // 6 x 4 accumulators + 5 = 29 zmm

  template <bool kSomeRows>
  SPARSE_OPS_TARGET_AVX512
  void Pairs(const float* in, const float* w, const int32_t* in_rows,
             const int32_t* out_rows, int64_t m, int64_t o0,
             const ActiveWeights& active, float* acc) const {
    ForRowGroups<kTileRows>(m, [&](auto rows, int64_t r) {
      constexpr int kRows = decltype(rows)::value;
      const float* x[kRows];
      float* dst[kRows];
      Pointers(in, in_rows + r, out_rows + r, kRows, o0, acc, x, dst);
      Rows<kRows, kSomeRows>(x, w, active, dst);
    });
  }

  SPARSE_OPS_TARGET_AVX512
  void Pointers(const float* in, const int32_t* in_rows,
                const int32_t* out_rows, int rows, int64_t o0, float* acc,
                const float** x, float** dst) const {
    for (int r = 0; r < rows; ++r) {
      x[r] = in + static_cast<int64_t>(in_rows[r]) * c_in_;
      dst[r] = acc + (out_rows[r] - o0) * c_out_;
    }
  }

  template <int kRows, bool kSomeRows>
  SPARSE_OPS_TARGET_AVX512
  void Rows(const float* const* x, const float* w, const ActiveWeights& active,
            float* const* dst) const {
    ForActiveTileRuns(active.tiles, c_out_, [&](int64_t j, auto vectors) {
      Tile<kRows, decltype(vectors)::value, kSomeRows>(x, w, j, active, dst);
    });
  }

  template <int kRows, int kVectors, bool kSomeRows>
  SPARSE_OPS_TARGET_AVX512
  void Tile(const float* const* x, const float* w, int64_t j,
            const ActiveWeights& active, float* const* dst) const {
    __m512 c[kRows][kVectors];
    for (int r = 0; r < kRows; ++r) {
      for (int v = 0; v < kVectors; ++v) c[r][v] = _mm512_setzero_ps();
    }
    const int64_t n = kSomeRows ? active.n_rows : c_in_;
    for (int64_t t = 0; t < n; ++t) {
      const int64_t k = kSomeRows ? active.rows[t] : t;
      __m512 wv[kVectors];
      for (int v = 0; v < kVectors; ++v) {
        wv[v] = _mm512_loadu_ps(w + k * c_out_ + j + 16 * v);
      }
      for (int r = 0; r < kRows; ++r) {
        const __m512 xb = _mm512_set1_ps(x[r][k]);
        for (int v = 0; v < kVectors; ++v) {
          c[r][v] = _mm512_fmadd_ps(xb, wv[v], c[r][v]);
        }
      }
    }
    for (int r = 0; r < kRows; ++r) {
      for (int v = 0; v < kVectors; ++v) {
        float* d = dst[r] + j + 16 * v;
        _mm512_storeu_ps(d, _mm512_add_ps(_mm512_loadu_ps(d), c[r][v]));
      }
    }
  }

  int64_t c_in_, c_out_;
};

// bfloat16 products with float accumulation (avx512_bf16), c_in even and
// c_out a multiple of 16. Each vdpbf16ps takes a pair of input channels:
// the input row's pair (2t, 2t + 1) is broadcast as one 32-bit value, and
// the weights are packed in pairs, w[(t * c_out + j) * 2 + h] = W[2t + h][j],
// so one instruction adds x[2t] W[2t][j] + x[2t + 1] W[2t + 1][j] to 16
// columns: twice the multiplies of a float FMA, half the bytes read. The
// products are exact in float; the instruction treats denormals as zero.
// active.rows lists channel pairs here (see PairPlan).
class Avx512Bf16PairProduct {
 public:
  static bool Supports(int64_t c_in, int64_t c_out) {
    return c_in % 2 == 0 && c_out % 16 == 0;
  }
  Avx512Bf16PairProduct(int64_t c_in, int64_t c_out)
      : pairs_(c_in / 2), c_in_(c_in), c_out_(c_out) {}

  SPARSE_OPS_TARGET_AVX512_BF16
  void operator()(const bfloat16* in, const uint16_t* w, const int32_t* in_rows,
                  const int32_t* out_rows, int64_t m, int64_t o0,
                  const ActiveWeights& active, float* acc) {
    ForRowGroups<kTileRows>(m, [&](auto rows, int64_t r) {
      constexpr int kRows = decltype(rows)::value;
      const bfloat16* x[kRows];
      float* dst[kRows];
      for (int q = 0; q < kRows; ++q) {
        x[q] = in + static_cast<int64_t>(in_rows[r + q]) * c_in_;
        dst[q] = acc + (out_rows[r + q] - o0) * c_out_;
      }
      if (active.n_rows == pairs_) {
        Rows<kRows, false>(x, w, active, dst);
      } else {
        Rows<kRows, true>(x, w, active, dst);
      }
    });
  }

 private:
  static constexpr int kTileRows = 6;  // 6 x 4 accumulators + 5 = 29 zmm

  template <int kRows, bool kSomePairs>
  SPARSE_OPS_TARGET_AVX512_BF16
  void Rows(const bfloat16* const* x, const uint16_t* w,
            const ActiveWeights& active, float* const* dst) const {
    ForActiveTileRuns(active.tiles, c_out_, [&](int64_t j, auto vectors) {
      Tile<kRows, decltype(vectors)::value, kSomePairs>(x, w, j, active, dst);
    });
  }

  template <int kRows, int kVectors, bool kSomePairs>
  SPARSE_OPS_TARGET_AVX512_BF16
  void Tile(const bfloat16* const* x, const uint16_t* w, int64_t j,
            const ActiveWeights& active, float* const* dst) const {
    __m512 c[kRows][kVectors];
    for (int r = 0; r < kRows; ++r) {
      for (int v = 0; v < kVectors; ++v) c[r][v] = _mm512_setzero_ps();
    }
    const int64_t n = kSomePairs ? active.n_rows : pairs_;
    for (int64_t q = 0; q < n; ++q) {
      const int64_t t = kSomePairs ? active.rows[q] : q;
      __m512bh wv[kVectors];
      for (int v = 0; v < kVectors; ++v) {
        wv[v] = (__m512bh)_mm512_loadu_si512(w + (t * c_out_ + j + 16 * v) * 2);
      }
      for (int r = 0; r < kRows; ++r) {
        int32_t pair;  // channels 2t and 2t + 1 as one 32-bit value
        std::memcpy(&pair, x[r] + 2 * t, sizeof(pair));
        const __m512bh xb = (__m512bh)_mm512_set1_epi32(pair);
        for (int v = 0; v < kVectors; ++v) {
          c[r][v] = _mm512_dpbf16_ps(c[r][v], xb, wv[v]);
        }
      }
    }
    for (int r = 0; r < kRows; ++r) {
      for (int v = 0; v < kVectors; ++v) {
        float* d = dst[r] + j + 16 * v;
        _mm512_storeu_ps(d, _mm512_add_ps(_mm512_loadu_ps(d), c[r][v]));
      }
    }
  }

  int64_t pairs_, c_in_, c_out_;
};

// In-register transpose of 8 rows of 8 floats.
SPARSE_OPS_TARGET_AVX2
inline void Transpose8x8(__m256* r) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]);
  const __m256 t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]);
  const __m256 t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]);
  const __m256 t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]);
  const __m256 t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// The sparse-weight product (float, AVX2 + FMA): the paper's pruned
// convolution, with work proportional to the non-zero weights. Tiles of up
// to kPairTile pairs are gathered transposed (xt [c_in, kPairTile]: one
// input channel of 32 pairs per 4 vectors), so that each non-zero weight is
// one broadcast and FMAs over the pairs: yt[j] += xt[i] * W[i][j]. yt is
// transposed back and added into the accumulator rows. Each output value is
// one FMA chain over the non-zero weights in increasing input channel, i.e.
// the dense product's chain without its zero terms: the same float sums.
template <Isa kIsa>
class VectorSparseWeightProduct {
 public:
  VectorSparseWeightProduct(int64_t c_in, int64_t c_out)
      : c_in_(c_in), c_out_(c_out), xt_(c_in * kPairTile),
        yt_(c_out * kPairTile), zero_(c_in, 0.0f), sink_(c_out) {}

  // cols: the offset's column starts (c_out + 1) into entry_row/value.
  SPARSE_OPS_TARGET_AVX2
  void operator()(const float* in, const int64_t* cols,
                  const int32_t* entry_row, const float* entry_value,
                  const int32_t* in_rows, const int32_t* out_rows, int64_t m,
                  int64_t o0, float* acc) {
    for (int64_t r0 = 0; r0 < m; r0 += kPairTile) {
      const int n = static_cast<int>(std::min(kPairTile, m - r0));
      GatherTransposed(in, in_rows + r0, n);
      if constexpr (kIsa == Isa::kAvx512) {
        switch ((n + 15) / 16) {  // AVX-512 vectors of pairs in use
          case 4: Columns512<4>(cols, entry_row, entry_value); break;
          case 3: Columns512<3>(cols, entry_row, entry_value); break;
          case 2: Columns512<2>(cols, entry_row, entry_value); break;
          default: Columns512<1>(cols, entry_row, entry_value); break;
        }
        AddTransposed(out_rows + r0, n, o0, acc);
        continue;
      }
      switch ((n + 7) / 8) {  // vectors of pairs in use
        case 8: Columns<8>(cols, entry_row, entry_value); break;
        case 7: Columns<7>(cols, entry_row, entry_value); break;
        case 6: Columns<6>(cols, entry_row, entry_value); break;
        case 5: Columns<5>(cols, entry_row, entry_value); break;
        case 4: Columns<4>(cols, entry_row, entry_value); break;
        case 3: Columns<3>(cols, entry_row, entry_value); break;
        case 2: Columns<2>(cols, entry_row, entry_value); break;
        default: Columns<1>(cols, entry_row, entry_value); break;
      }
      AddTransposed(out_rows + r0, n, o0, acc);
    }
  }

 private:
  // xt[i * kPairTile + r] = in[in_rows[r]][i], zero rows past n.
  SPARSE_OPS_TARGET_AVX2
  void GatherTransposed(const float* in, const int32_t* in_rows, int n) {
    for (int r0 = 0; r0 < n; r0 += 8) {
      const float* x[8];
      for (int q = 0; q < 8; ++q) {
        x[q] = r0 + q < n ? in + static_cast<int64_t>(in_rows[r0 + q]) * c_in_
                          : zero_.data();
      }
      int64_t i = 0;
      for (; i + 8 <= c_in_; i += 8) {
        __m256 v[8];
        for (int q = 0; q < 8; ++q) v[q] = _mm256_loadu_ps(x[q] + i);
        Transpose8x8(v);
        for (int q = 0; q < 8; ++q) {
          _mm256_storeu_ps(xt_.data() + (i + q) * kPairTile + r0, v[q]);
        }
      }
      for (; i < c_in_; ++i) {
        for (int q = 0; q < 8; ++q) xt_[i * kPairTile + r0 + q] = x[q][i];
      }
    }
  }

  // yt[j] = sum over column j's entries of xt[row] * value: kVectors
  // independent FMA chains, one per 8 pairs.
  template <int kVectors>
  SPARSE_OPS_TARGET_AVX2
  void Columns(const int64_t* cols, const int32_t* entry_row,
               const float* entry_value) {
    for (int64_t j = 0; j < c_out_; ++j) {
      __m256 a[kVectors];
      for (int v = 0; v < kVectors; ++v) a[v] = _mm256_setzero_ps();
      Chain<kVectors>(xt_.data(), entry_row, entry_value, cols[j], cols[j + 1],
                      a);
      for (int v = 0; v < kVectors; ++v) {
        _mm256_storeu_ps(yt_.data() + j * kPairTile + 8 * v, a[v]);
      }
    }
  }

  template <int kVectors>
  SPARSE_OPS_TARGET_AVX2
  static void Chain(const float* xt, const int32_t* entry_row,
                    const float* entry_value, int64_t p, int64_t end,
                    __m256* a) {
    for (; p < end; ++p) {
      const __m256 w = _mm256_broadcast_ss(entry_value + p);
      const float* x = xt + entry_row[p];
      for (int v = 0; v < kVectors; ++v) {
        a[v] = _mm256_fmadd_ps(_mm256_loadu_ps(x + 8 * v), w, a[v]);
      }
    }
  }

  // Columns with AVX-512 vectors of 16 pairs: per pair the same FMA chain
  // as Columns', so the two agree bit for bit.
  template <int kVectors>
  SPARSE_OPS_TARGET_AVX512
  void Columns512(const int64_t* cols, const int32_t* entry_row,
                  const float* entry_value) {
    for (int64_t j = 0; j < c_out_; ++j) {
      __m512 a[kVectors];
      for (int v = 0; v < kVectors; ++v) a[v] = _mm512_setzero_ps();
      for (int64_t p = cols[j]; p < cols[j + 1]; ++p) {
        const __m512 w = _mm512_set1_ps(entry_value[p]);
        const float* x = xt_.data() + entry_row[p];
        for (int v = 0; v < kVectors; ++v) {
          a[v] = _mm512_fmadd_ps(_mm512_loadu_ps(x + 16 * v), w, a[v]);
        }
      }
      for (int v = 0; v < kVectors; ++v) {
        _mm512_storeu_ps(yt_.data() + j * kPairTile + 16 * v, a[v]);
      }
    }
  }

  // acc[out_rows[r] - o0][j] += yt[j * kPairTile + r] for r < n, pairs in
  // order (a row met twice gets both, as in the dense product).
  SPARSE_OPS_TARGET_AVX2
  void AddTransposed(const int32_t* out_rows, int n, int64_t o0, float* acc) {
    for (int r0 = 0; r0 < n; r0 += 8) {
      float* d[8];
      for (int q = 0; q < 8; ++q) {
        d[q] =
            r0 + q < n ? acc + (out_rows[r0 + q] - o0) * c_out_ : sink_.data();
      }
      int64_t j = 0;
      for (; j + 8 <= c_out_; j += 8) {
        __m256 v[8];
        for (int q = 0; q < 8; ++q) {
          v[q] = _mm256_loadu_ps(yt_.data() + (j + q) * kPairTile + r0);
        }
        Transpose8x8(v);
        for (int q = 0; q < 8; ++q) {
          _mm256_storeu_ps(d[q] + j,
                           _mm256_add_ps(_mm256_loadu_ps(d[q] + j), v[q]));
        }
      }
      for (; j < c_out_; ++j) {
        for (int q = 0; q < 8; ++q) d[q][j] += yt_[j * kPairTile + r0 + q];
      }
    }
  }

  int64_t c_in_, c_out_;
  std::vector<float> xt_, yt_, zero_, sink_;
};
using Avx2SparseWeightProduct = VectorSparseWeightProduct<Isa::kAvx2>;
using Avx512SparseWeightProduct = VectorSparseWeightProduct<Isa::kAvx512>;
#endif  // SPARSE_OPS_AVX2

// Stands in for the sparse-weight product where there is none (never called:
// PlanWeights then picks no sparse offset).
template <typename T, typename Acc = T>
struct NoSparseProduct {
  NoSparseProduct(int64_t, int64_t) {}
  void operator()(const T*, const int64_t*, const int32_t*, const Acc*,
                  const int32_t*, const int32_t*, int64_t, int64_t, Acc*) {}
};

// The block loop of SparseConv: each offset's pairs in the block go to the
// product the plan picked (or nowhere when its weights are all zero).
// Acc is the accumulation type (float for bfloat16 outputs, whose blocks are
// rounded to bfloat16 once, at the end) and W the weights' type as the
// dense product takes them, c_in * c_out of them per offset.
// With out_cols, the products compute only those output channels (weights
// [K, c_in, out_cols.size()]) into a per-thread block, widened into out's
// c_out_full channels, the others zero.
template <typename In, typename T, typename Acc, typename W, typename Dense,
          typename Sparse>
void ConvBlocks(const In* in, int64_t c_in, const W* weights, int64_t c_out,
                const KernelMapView& map, int64_t n_out, T* out,
                const WeightPlan<Acc>& plan,
                const std::vector<int32_t>& out_cols, int64_t c_out_full,
                const ParallelFor& parallel_for) {
  const int64_t K = map.num_offsets;
  const int64_t num_blocks = (n_out + kBlockRows - 1) / kBlockRows;
  const int64_t pairs = map.splits[K];
  const int64_t cost =
      (pairs / std::max<int64_t>(num_blocks, 1) + 1) * c_in * c_out;
  const bool compact = !out_cols.empty();
  // Blocks accumulate in out's rows unless compact or of another type.
  const bool own_block = compact || !std::is_same_v<T, Acc>;
  parallel_for(num_blocks, cost, [&](int64_t begin, int64_t end) {
    Dense dense(c_in, c_out);
    Sparse sparse(c_in, c_out);
    std::vector<Acc> block(own_block ? kBlockRows * c_out : 0);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t o0 = b * kBlockRows;
      const int64_t rows = std::min(kBlockRows, n_out - o0);
      // The block's accumulator, L2-resident.
      Acc* acc = block.data();
      if constexpr (std::is_same_v<T, Acc>) {
        if (!own_block) acc = out + o0 * c_out;
      }
      std::fill(acc, acc + rows * c_out, Acc(0));
      for (int64_t k = 0; k < K; ++k) {
        if (plan.kind[k] == WeightPlan<Acc>::kSkip) continue;
        const int64_t p0 =
            LowerBound(map.out_rows, map.splits[k], map.splits[k + 1], o0);
        const int64_t p1 =
            LowerBound(map.out_rows, p0, map.splits[k + 1], o0 + rows);
        if (p1 == p0) continue;
        if (plan.kind[k] == WeightPlan<Acc>::kSparse) {
          sparse(in, plan.col_start.data() + k * (c_out + 1),
                 plan.entry_row.data(), plan.entry_value.data(),
                 map.in_rows + p0, map.out_rows + p0, p1 - p0, o0, acc);
        } else {
          const ActiveWeights active{plan.rows.data() + plan.row_start[k],
                                     plan.row_start[k + 1] - plan.row_start[k],
                                     plan.tiles.data() + k * plan.n_tiles};
          dense(in, weights + k * c_in * c_out, map.in_rows + p0,
                map.out_rows + p0, p1 - p0, o0, active, acc);
        }
      }
      T* dst = out + o0 * c_out_full;
      if (compact) {
        std::fill(dst, dst + rows * c_out_full, T(0));
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t t = 0; t < c_out; ++t) {
            dst[r * c_out_full + out_cols[t]] =
                static_cast<T>(acc[r * c_out + t]);
          }
        }
      } else if constexpr (!std::is_same_v<T, Acc>) {
        // Round to nearest even (Eigen's conversion, vectorized).
        ArrayMap<T>(dst, rows * c_out) =
            ConstArrayMap<Acc>(acc, rows * c_out).template cast<T>();
      }
    }
  });
}

// The output channels worth computing when at least a quarter of them have
// zero weights at every offset (their outputs are zero): the others, padded
// with zero channels to a multiple of 8 (the AVX2 products' width) where
// c_out allows. Empty when compacting does not pay.
template <typename T>
std::vector<int32_t> ActiveOutputChannels(const T* w, int64_t K, int64_t c_in,
                                          int64_t c_out) {
  std::vector<uint8_t> active(c_out, 0);
  for (int64_t q = 0; q < K * c_in; ++q) {
    for (int64_t j = 0; j < c_out; ++j) active[j] |= w[q * c_out + j] != T(0);
  }
  const int64_t n = std::count(active.begin(), active.end(), uint8_t{1});
  if (n == 0 || 4 * n > 3 * c_out) return {};
  int64_t padded = c_out % 8 == 0 ? (n + 7) / 8 * 8 : n;
  std::vector<int32_t> cols;
  for (int64_t j = 0; j < c_out; ++j) {
    if (active[j]) cols.push_back(static_cast<int32_t>(j));
  }
  for (int64_t j = 0; j < c_out && static_cast<int64_t>(cols.size()) < padded;
       ++j) {
    if (!active[j]) cols.push_back(static_cast<int32_t>(j));
  }
  std::sort(cols.begin(), cols.end());
  return cols;
}

// The weights as SparseConv's products take them: [K, c_in, c_prod],
// transposed where asked, and only the output channels worth computing
// (out_cols; empty when all c_out = c_prod are).
template <typename T>
struct ConvWeights {
  const T* data;
  int64_t c_prod;
  std::vector<int32_t> out_cols;
  std::vector<T> storage;
};

template <typename T>
ConvWeights<T> PrepareWeights(const T* weights, int64_t K, int64_t c_in,
                              int64_t c_out, bool transpose_weights,
                              WeightPath path) {
  ConvWeights<T> w{weights, c_out, {}, {}};
  if (transpose_weights) {  // [K, c_out, c_in] -> [K, c_in, c_out]; small
    std::vector<T> transposed(K * c_in * c_out);
    for (int64_t k = 0; k < K; ++k) {
      MatrixMap<T>(transposed.data() + k * c_in * c_out, c_in, c_out) =
          ConstMatrixMap<T>(weights + k * c_in * c_out, c_out, c_in)
              .transpose();
    }
    w.storage = std::move(transposed);
    w.data = w.storage.data();
  }
  // Output channels with no weight at all are left out of the products.
  if (path != WeightPath::kDense) {
    w.out_cols = ActiveOutputChannels(w.data, K, c_in, c_out);
  }
  if (!w.out_cols.empty()) {
    w.c_prod = w.out_cols.size();
    std::vector<T> compact(K * c_in * w.c_prod);
    for (int64_t q = 0; q < K * c_in; ++q) {
      for (int64_t t = 0; t < w.c_prod; ++t) {
        compact[q * w.c_prod + t] = w.data[q * c_out + w.out_cols[t]];
      }
    }
    w.storage = std::move(compact);
    w.data = w.storage.data();
  }
  return w;
}

#ifdef SPARSE_OPS_AVX2
// SparseConv's vector float products, by ISA path and channel count, into
// float or (rounded) bfloat16 outputs.
template <typename Out>
void VectorConv(const float* in, int64_t c_in, const ConvWeights<float>& w,
                int64_t c_out, const KernelMapView& map, int64_t n_out,
                Out* out, const ParallelFor& parallel_for, WeightPath path,
                Isa isa) {
  const int64_t K = map.num_offsets;
  const bool avx512 =
      isa >= Isa::kAvx512 && Avx512PairProduct::Supports(w.c_prod);
  const WeightPlan<float> plan =
      PlanWeights(w.data, K, c_in, w.c_prod, path, /*has_sparse_product=*/true,
                  avx512 ? kAvx512SparseCostScale : 1.0);
  if (avx512) {
    ConvBlocks<float, Out, float, float, Avx512PairProduct,
               Avx512SparseWeightProduct>(in, c_in, w.data, w.c_prod, map,
                                          n_out, out, plan, w.out_cols, c_out,
                                          parallel_for);
  } else if (Avx2PairProduct::Supports(w.c_prod)) {
    ConvBlocks<float, Out, float, float, Avx2PairProduct,
               Avx2SparseWeightProduct>(in, c_in, w.data, w.c_prod, map, n_out,
                                        out, plan, w.out_cols, c_out,
                                        parallel_for);
  } else {
    ConvBlocks<float, Out, float, float, EigenPairProduct<float>,
               Avx2SparseWeightProduct>(in, c_in, w.data, w.c_prod, map, n_out,
                                        out, plan, w.out_cols, c_out,
                                        parallel_for);
  }
}

// dst[i] = float(src[i]) for i < n (exact: a bfloat16 is the top half of a
// float), eight values per instruction.
SPARSE_OPS_TARGET_AVX2
void WidenAvx2(const bfloat16* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i half =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                        _mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
  }
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

// The plan's non-zero input channels as channel pairs, the bfloat16
// products' unit: pair t where channel 2t or 2t + 1 has a weight.
WeightPlan<float> PairPlan(WeightPlan<float> plan, int64_t K) {
  std::vector<int32_t> pairs;
  std::vector<int64_t> start(K + 1, 0);
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t q = plan.row_start[k]; q < plan.row_start[k + 1]; ++q) {
      const int32_t t = plan.rows[q] / 2;  // rows increase within an offset
      if (static_cast<int64_t>(pairs.size()) == start[k] || pairs.back() != t) {
        pairs.push_back(t);
      }
    }
    start[k + 1] = pairs.size();
  }
  plan.rows = std::move(pairs);
  plan.row_start = std::move(start);
  return plan;
}

// w [K, c_in, c_out] (bfloat16 values, held in float) in channel pairs for
// Avx512Bf16PairProduct: packed[((k * c_in / 2 + t) * c_out + j) * 2 + h]
// holds the bits of W[k][2t + h][j].
std::vector<uint16_t> PackPairs(const float* w, int64_t K, int64_t c_in,
                                int64_t c_out) {
  std::vector<uint16_t> packed(K * c_in * c_out);
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t i = 0; i < c_in; ++i) {
      for (int64_t j = 0; j < c_out; ++j) {
        const int64_t t = i / 2, h = i % 2;
        packed[((k * (c_in / 2) + t) * c_out + j) * 2 + h] =
            Eigen::numext::bit_cast<uint16_t>(
                bfloat16(w[(k * c_in + i) * c_out + j]));
      }
    }
  }
  return packed;
}
#endif  // SPARSE_OPS_AVX2

// SparseConv's products on prepared weights, into outputs of type Out
// (T, or bfloat16 rounded once): float takes the vector kernels of the
// CPU's path, other types and the portable path Eigen's.
template <typename T, typename Out>
void ConvProducts(const T* in, int64_t c_in, const ConvWeights<T>& w,
                  int64_t c_out, const KernelMapView& map, int64_t n_out,
                  Out* out, const ParallelFor& parallel_for, WeightPath path,
                  Isa isa) {
#ifdef SPARSE_OPS_AVX2
  if constexpr (std::is_same_v<T, float>) {
    if (isa != Isa::kPortable) {
      VectorConv(in, c_in, w, c_out, map, n_out, out, parallel_for, path, isa);
      return;
    }
  }
#endif
  const WeightPlan<T> plan =
      PlanWeights(w.data, map.num_offsets, c_in, w.c_prod, path,
                  /*has_sparse_product=*/false);
  ConvBlocks<T, Out, T, T, EigenPairProduct<T>, NoSparseProduct<T>>(
      in, c_in, w.data, w.c_prod, map, n_out, out, plan, w.out_cols, c_out,
      parallel_for);
}

// dst = src widened to float, n values, in parallel chunks.
void Widen(const bfloat16* src, int64_t n, float* dst, Isa isa,
           const ParallelFor& parallel_for) {
  constexpr int64_t kChunk = 1 << 14;
  parallel_for(
      (n + kChunk - 1) / kChunk, kChunk, [&](int64_t begin, int64_t end) {
        const int64_t i0 = begin * kChunk, i1 = std::min(n, end * kChunk);
#ifdef SPARSE_OPS_AVX2
        if (isa != Isa::kPortable) {
          WidenAvx2(src + i0, i1 - i0, dst + i0);
          return;
        }
#endif
        ArrayMap<float>(dst + i0, i1 - i0) =
            ConstArrayMap<bfloat16>(src + i0, i1 - i0).cast<float>();
      });
}

Status SparseConvBfloat16(const bfloat16* in, int64_t n_in, int64_t c_in,
                          const bfloat16* weights, int64_t c_out,
                          bool transpose_weights, const KernelMapView& map,
                          int64_t n_out, bfloat16* out,
                          const Allocate& allocate,
                          const ParallelFor& parallel_for, WeightPath path) {
  const int64_t K = map.num_offsets;
  std::vector<float> wide_weights(K * c_in * c_out);  // small
  ArrayMap<float>(wide_weights.data(), wide_weights.size()) =
      ConstArrayMap<bfloat16>(weights, wide_weights.size()).cast<float>();
  const ConvWeights<float> w = PrepareWeights(wide_weights.data(), K, c_in,
                                              c_out, transpose_weights, path);
  const Isa isa = ActiveIsa();
#ifdef SPARSE_OPS_AVX2
  if (isa >= Isa::kAvx512Bf16 &&
      Avx512Bf16PairProduct::Supports(c_in, w.c_prod)) {
    const WeightPlan<float> plan =
        PairPlan(PlanWeights(w.data, K, c_in, w.c_prod, path,
                             /*has_sparse_product=*/false),
                 K);
    const std::vector<uint16_t> packed = PackPairs(w.data, K, c_in, w.c_prod);
    ConvBlocks<bfloat16, bfloat16, float, uint16_t, Avx512Bf16PairProduct,
               NoSparseProduct<bfloat16, float>>(
        in, c_in, packed.data(), w.c_prod, map, n_out, out, plan, w.out_cols,
        c_out, parallel_for);
    return Status::Ok();
  }
#endif
  // The rows are widened once (each is read by up to K pairs).
  float* wide_in = AllocateArray<float>(allocate, n_in * c_in);
  if (wide_in == nullptr) {
    return Status::OutOfMemory("no memory for the bfloat16 convolution's " +
                               std::to_string(n_in) + " x " +
                               std::to_string(c_in) + " widened input rows");
  }
  Widen(in, n_in * c_in, wide_in, isa, parallel_for);
  ConvProducts(wide_in, c_in, w, c_out, map, n_out, out, parallel_for, path,
               isa);
  return Status::Ok();
}

template <typename T>
void SparseConv(const T* in, int64_t c_in, const T* weights, int64_t c_out,
                bool transpose_weights, const KernelMapView& map, int64_t n_out,
                T* out, const ParallelFor& parallel_for, WeightPath path) {
  const int64_t K = map.num_offsets;
  const ConvWeights<T> w =
      PrepareWeights(weights, K, c_in, c_out, transpose_weights, path);
  ConvProducts(in, c_in, w, c_out, map, n_out, out, parallel_for, path,
               ActiveIsa());
}

// Outer products of a run of pairs: acc [c_in, c_out] +=
// sum_r in[in_rows[r]]^T grad[out_rows[r]] for r < m. The generic version
// gathers the rows and lets Eigen multiply.
template <typename T>
class EigenOuterProducts {
 public:
  EigenOuterProducts(int64_t c_in, int64_t c_out)
      : c_in_(c_in), c_out_(c_out), x_(kChunkPairs, c_in),
        g_(kChunkPairs, c_out) {}

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
      : c_in_(c_in), c_out_(c_out), x_(kChunkPairs * c_in),
        g_(kChunkPairs * c_out) {}

  SPARSE_OPS_TARGET_AVX2
  void operator()(const float* in, const float* grad, const int32_t* in_rows,
                  const int32_t* out_rows, int64_t m, float* acc) {
    // Contiguous copies: the tiles below sweep the chunk many times.
    GatherRows(in, c_in_, in_rows, m, x_.data());
    GatherRows(grad, c_out_, out_rows, m, g_.data());
    ForRowGroups<kTileRows>(c_in_, [&](auto rows, int64_t a) {
      Columns<decltype(rows)::value>(m, a, acc);
    });
  }

 private:
  static constexpr int kTileRows = 6;

  template <int kRows>
  SPARSE_OPS_TARGET_AVX2
  void Columns(int64_t m, int64_t a, float* acc) const {
    int64_t j = 0;
    for (; j + 16 <= c_out_; j += 16) Tile<kRows, 2>(m, a, j, acc);
    if (j < c_out_) Tile<kRows, 1>(m, a, j, acc);
  }

  template <int kRows, int kVectors>
  SPARSE_OPS_TARGET_AVX2
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

// The same accumulation with AVX-512, c_out a multiple of 16: tiles of 6
// input channels x up to 64 output channels, each acc value the same FMA
// chain as Avx2OuterProducts' (bit for bit equal).
class Avx512OuterProducts {
 public:
  static bool Supports(int64_t c_out) { return c_out % 16 == 0; }
  Avx512OuterProducts(int64_t c_in, int64_t c_out)
      : c_in_(c_in), c_out_(c_out), x_(kChunkPairs * c_in),
        g_(kChunkPairs * c_out) {}

  SPARSE_OPS_TARGET_AVX512
  void operator()(const float* in, const float* grad, const int32_t* in_rows,
                  const int32_t* out_rows, int64_t m, float* acc) {
    GatherRows(in, c_in_, in_rows, m, x_.data());
    GatherRows(grad, c_out_, out_rows, m, g_.data());
    ForRowGroups<kTileRows>(c_in_, [&](auto rows, int64_t a) {
      Columns<decltype(rows)::value>(m, a, acc);
    });
  }

 private:
  static constexpr int kTileRows = 6;

  template <int kRows>
  SPARSE_OPS_TARGET_AVX512
  void Columns(int64_t m, int64_t a, float* acc) const {
    int64_t j = 0;
    for (; j + 64 <= c_out_; j += 64) Tile<kRows, 4>(m, a, j, acc);
    switch ((c_out_ - j) / 16) {
      case 3: Tile<kRows, 3>(m, a, j, acc); break;
      case 2: Tile<kRows, 2>(m, a, j, acc); break;
      case 1: Tile<kRows, 1>(m, a, j, acc); break;
      default: break;
    }
  }

  template <int kRows, int kVectors>
  SPARSE_OPS_TARGET_AVX512
  void Tile(int64_t m, int64_t a, int64_t j, float* acc) const {
    __m512 c[kRows][kVectors];
    for (int r = 0; r < kRows; ++r) {
      for (int v = 0; v < kVectors; ++v) {
        c[r][v] = _mm512_loadu_ps(acc + (a + r) * c_out_ + j + 16 * v);
      }
    }
    const float* x = x_.data() + a;
    const float* g = g_.data() + j;
    for (int64_t p = 0; p < m; ++p, x += c_in_, g += c_out_) {
      __m512 gv[kVectors];
      for (int v = 0; v < kVectors; ++v) gv[v] = _mm512_loadu_ps(g + 16 * v);
      for (int r = 0; r < kRows; ++r) {
        const __m512 xb = _mm512_set1_ps(x[r]);
        for (int v = 0; v < kVectors; ++v) {
          c[r][v] = _mm512_fmadd_ps(xb, gv[v], c[r][v]);
        }
      }
    }
    for (int r = 0; r < kRows; ++r) {
      for (int v = 0; v < kVectors; ++v) {
        _mm512_storeu_ps(acc + (a + r) * c_out_ + j + 16 * v, c[r][v]);
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
void WeightGradient(const T* in, int64_t c_in, const T* grad_out, int64_t c_out,
                    const KernelMapView& map, T* grad_weights, T* partial,
                    const ParallelFor& parallel_for) {
  const int64_t K = map.num_offsets;
  int64_t segment;
  const std::vector<int64_t> first_segment =
      WeightGradientSegments(map, &segment);
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
      const int64_t p_begin = map.splits[k] + (s - first_segment[k]) * segment;
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
                   for (int64_t s = first_segment[k]; s < first_segment[k + 1];
                        ++s) {
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
  const Isa isa = ActiveIsa();
  if constexpr (std::is_same_v<T, float>) {
    if (isa >= Isa::kAvx512 && Avx512OuterProducts::Supports(c_out)) {
      WeightGradient<float, Avx512OuterProducts>(
          in, c_in, grad_out, c_out, map, grad_weights, scratch, parallel_for);
      return;
    }
    if (isa != Isa::kPortable && Avx2OuterProducts::Supports(c_out)) {
      WeightGradient<float, Avx2OuterProducts>(
          in, c_in, grad_out, c_out, map, grad_weights, scratch, parallel_for);
      return;
    }
  }
#endif
  WeightGradient<T, EigenOuterProducts<T>>(in, c_in, grad_out, c_out, map,
                                           grad_weights, scratch, parallel_for);
}

#define SPARSE_OPS_INSTANTIATE(T)                                              \
  template void SparseConv<T>(const T*, int64_t, const T*, int64_t, bool,      \
                              const KernelMapView&, int64_t, T*,               \
                              const ParallelFor&, WeightPath);                 \
  template void SparseConvWeightGradient<T>(const T*, int64_t, const T*,       \
                                            int64_t, const KernelMapView&, T*, \
                                            T*, const ParallelFor&);
SPARSE_OPS_INSTANTIATE(float)
SPARSE_OPS_INSTANTIATE(double)
#undef SPARSE_OPS_INSTANTIATE

}  // namespace sparse_ops
