#include "kernels/core/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>

namespace sparse_ops {

namespace {

// Fixed blocks, whatever the thread count.
constexpr int64_t kRowBlock = 4096;
// 16 channels: one cache line of floats per site, so that one pass over a
// group's sites fills the candidates of 16 channels.
constexpr int64_t kChannelBlock = 16;

int64_t NumBlocks(int64_t n, int64_t block) { return (n + block - 1) / block; }

// A candidate: its key and its row. Better = larger key, then lower row: a
// total order, since rows are distinct and keys are never NaN.
template <typename T>
struct Candidate {
  T key;
  int32_t row;
};

template <typename T>
bool Better(const Candidate<T>& a, const Candidate<T>& b) {
  return a.key > b.key || (a.key == b.key && a.row < b.row);
}

template <typename T>
T Key(T v, AttentionMode mode) {
  if (std::isnan(v)) return -std::numeric_limits<T>::infinity();
  return mode == AttentionMode::kAbs ? std::abs(v) : v;
}

// Moves the k best candidates to the front of [first, last); k < size.
template <typename T>
void SelectBest(Candidate<T>* first, Candidate<T>* last, int64_t k) {
  std::nth_element(first, first + (k - 1), last, Better<T>);
}

}  // namespace

BatchGroups GroupRowsByBatch(const int32_t* coords, int64_t n, int64_t cols) {
  BatchGroups groups;
  groups.starts.push_back(0);
  if (n == 0) return groups;
  int64_t max_batch = 0;
  for (int64_t i = 0; i < n; ++i) {
    max_batch = std::max<int64_t>(max_batch, coords[i * cols]);
  }
  groups.rows.resize(n);
  if (max_batch <= 2 * n + 1024) {
    // Counting sort: stable, so the rows of a group stay ascending.
    std::vector<int64_t> next(max_batch + 2, 0);
    for (int64_t i = 0; i < n; ++i) ++next[coords[i * cols] + 1];
    std::partial_sum(next.begin(), next.end(), next.begin());
    for (int64_t b = 0; b <= max_batch; ++b) {
      if (next[b + 1] > next[b]) groups.starts.push_back(next[b + 1]);
    }
    for (int64_t i = 0; i < n; ++i) {
      groups.rows[next[coords[i * cols]]++] = static_cast<int32_t>(i);
    }
    return groups;
  }
  // Few sites with huge batch indices: sort the rows instead.
  std::iota(groups.rows.begin(), groups.rows.end(), 0);
  std::stable_sort(groups.rows.begin(), groups.rows.end(),
                   [&](int32_t a, int32_t b) {
                     return coords[a * cols] < coords[b * cols];
                   });
  for (int64_t j = 1; j < n; ++j) {
    if (coords[groups.rows[j] * cols] != coords[groups.rows[j - 1] * cols]) {
      groups.starts.push_back(j);
    }
  }
  groups.starts.push_back(n);
  return groups;
}

template <typename T>
void AttentionKeep(const T* features, int64_t n, int64_t channels,
                   const BatchGroups& groups, int64_t k, AttentionMode mode,
                   AttentionPer per, bool* keep,
                   const ParallelFor& parallel_for) {
  const int64_t C = channels;
  parallel_for(NumBlocks(n, kRowBlock), kRowBlock * C,
               [&](int64_t begin, int64_t end) {
                 const int64_t hi = std::min(n, end * kRowBlock);
                 std::fill(keep + begin * kRowBlock * C, keep + hi * C, false);
               });
  if (k == 0 || n == 0 || C == 0) return;
  const int64_t num_groups = groups.num_groups();
  const int32_t* rows = groups.rows.data();
  const int64_t avg = std::max<int64_t>(1, n / num_groups);

  if (per == AttentionPer::kSite) {
    parallel_for(num_groups, avg * (C + 20), [&](int64_t begin, int64_t end) {
      std::vector<Candidate<T>> cand;
      for (int64_t g = begin; g < end; ++g) {
        const int32_t* r = rows + groups.starts[g];
        const int64_t size = groups.starts[g + 1] - groups.starts[g];
        int64_t take = size;
        if (k < size) {
          cand.resize(size);
          for (int64_t j = 0; j < size; ++j) {
            const T* f = features + int64_t{r[j]} * C;
            T norm2 = 0;  // the squared L2 norm ranks as the norm does
            for (int64_t c = 0; c < C; ++c) norm2 += f[c] * f[c];
            cand[j] = {Key(norm2, AttentionMode::kValue), r[j]};
          }
          SelectBest(cand.data(), cand.data() + size, k);
          take = k;
        }
        for (int64_t j = 0; j < take; ++j) {
          const int64_t row = k < size ? cand[j].row : r[j];
          std::fill(keep + row * C, keep + (row + 1) * C, true);
        }
      }
    });
    return;
  }

  // One unit = one group and one block of channels.
  const int64_t blocks = NumBlocks(C, kChannelBlock);
  parallel_for(num_groups * blocks, avg * kChannelBlock * 30,
               [&](int64_t begin, int64_t end) {
    std::vector<Candidate<T>> cand;
    for (int64_t u = begin; u < end; ++u) {
      const int64_t g = u / blocks;
      const int64_t c_lo = (u % blocks) * kChannelBlock;
      const int64_t width = std::min(C, c_lo + kChannelBlock) - c_lo;
      const int32_t* r = rows + groups.starts[g];
      const int64_t size = groups.starts[g + 1] - groups.starts[g];
      if (k >= size) {
        for (int64_t j = 0; j < size; ++j) {
          bool* dst = keep + int64_t{r[j]} * C + c_lo;
          std::fill(dst, dst + width, true);
        }
        continue;
      }
      // Channel-major candidates: one pass over the sites fills them all.
      cand.resize(width * size);
      for (int64_t j = 0; j < size; ++j) {
        const T* f = features + int64_t{r[j]} * C + c_lo;
        for (int64_t c = 0; c < width; ++c) {
          cand[c * size + j] = {Key(f[c], mode), r[j]};
        }
      }
      for (int64_t c = 0; c < width; ++c) {
        Candidate<T>* first = cand.data() + c * size;
        SelectBest(first, first + size, k);
        for (int64_t j = 0; j < k; ++j) {
          keep[int64_t{first[j].row} * C + c_lo + c] = true;
        }
      }
    }
  });
}

std::vector<int32_t> KeptRows(const bool* keep, int64_t n, int64_t channels,
                              const ParallelFor& parallel_for) {
  const int64_t C = channels;
  const int64_t num_blocks = NumBlocks(n, kRowBlock);
  auto kept = [&](int64_t i) {
    const bool* k = keep + i * C;
    return std::find(k, k + C, true) != k + C;
  };
  // Count per block, then write each block at its offset: same order as a
  // serial scan.
  std::vector<int64_t> offset(num_blocks + 1, 0);
  parallel_for(num_blocks, kRowBlock * C, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t hi = std::min(n, (b + 1) * kRowBlock);
      int64_t count = 0;
      for (int64_t i = b * kRowBlock; i < hi; ++i) count += kept(i);
      offset[b + 1] = count;
    }
  });
  std::partial_sum(offset.begin(), offset.end(), offset.begin());
  std::vector<int32_t> rows(offset[num_blocks]);
  parallel_for(num_blocks, kRowBlock * C, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t hi = std::min(n, (b + 1) * kRowBlock);
      int64_t out = offset[b];
      for (int64_t i = b * kRowBlock; i < hi; ++i) {
        if (kept(i)) rows[out++] = static_cast<int32_t>(i);
      }
    }
  });
  return rows;
}

#define SPARSE_OPS_INSTANTIATE(T)                                            \
  template void AttentionKeep<T>(const T*, int64_t, int64_t,                 \
                                 const BatchGroups&, int64_t, AttentionMode, \
                                 AttentionPer, bool*, const ParallelFor&);
SPARSE_OPS_INSTANTIATE(float)
SPARSE_OPS_INSTANTIATE(double)
#undef SPARSE_OPS_INSTANTIATE

}  // namespace sparse_ops
