#include "kernels/core/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <utility>

#include "kernels/core/isa.h"

namespace sparse_ops {

namespace {

// Fixed blocks, whatever the thread count.
constexpr int64_t kRowBlock = 4096;
// 16 channels: one cache line of floats per site, so that one pass over a
// group's sites reads the keys of 16 channels.
constexpr int64_t kChannelBlock = 16;
// Radix pre-selection: a histogram of the top kBucketBits bits of the keys
// finds the bucket holding the k-th best key; only that bucket needs
// nth_element.
constexpr int kBucketBits = 11;
constexpr int64_t kBuckets = int64_t{1} << kBucketBits;

int64_t NumBlocks(int64_t n, int64_t block) { return (n + block - 1) / block; }

// Keys as unsigned integers in the same order: a float's bits with the sign
// bit set for positives and all bits flipped for negatives.
template <typename T>
struct Unsigned;
template <>
struct Unsigned<float> {
  using type = uint32_t;
};
template <>
struct Unsigned<double> {
  using type = uint64_t;
};

// The ranking key of a value: by value or magnitude; NaN ranks as -inf, and
// + 0 turns -0 into +0 so that equal keys have equal bits.
template <typename T>
typename Unsigned<T>::type Key(T v, AttentionMode mode) {
  using U = typename Unsigned<T>::type;
  v = (mode == AttentionMode::kAbs ? std::abs(v) : v) + T(0);
  if (std::isnan(v)) v = -std::numeric_limits<T>::infinity();
  U u;
  std::memcpy(&u, &v, sizeof(u));
  constexpr U kSign = U{1} << (8 * sizeof(U) - 1);
  return (u & kSign) ? ~u : (u | kSign);
}

template <typename U>
int64_t Bucket(U key) {
  return static_cast<int64_t>(key >> (8 * sizeof(U) - kBucketBits));
}

// A candidate: its key and its row. Better = larger key, then lower row: a
// total order, since rows are distinct.
template <typename U>
struct Candidate {
  U key;
  int32_t row;
};

template <typename U>
bool Better(const Candidate<U>& a, const Candidate<U>& b) {
  return a.key > b.key || (a.key == b.key && a.row < b.row);
}

// Moves the k best candidates to the front of [first, last); 0 < k < size.
template <typename U>
void SelectBest(Candidate<U>* first, Candidate<U>* last, int64_t k) {
  std::nth_element(first, first + (k - 1), last, Better<U>);
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
  using U = typename Unsigned<T>::type;

  if (per == AttentionPer::kSite) {
    VectorizedFor(
        parallel_for, num_groups, avg * (C + 20),
        [&](int64_t begin, int64_t end) {
          std::vector<Candidate<U>> cand;
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

  // One unit = one group and one block of channels. Per channel: a
  // histogram of the keys' top bits; the entries in buckets above the one
  // holding the k-th best are kept, and nth_element picks the rest from that
  // bucket alone.
  const int64_t blocks = NumBlocks(C, kChannelBlock);
  VectorizedFor(
      parallel_for, num_groups * blocks, avg * kChannelBlock * 20,
      [&](int64_t begin, int64_t end) {
        std::vector<U> keys;
        std::vector<int64_t> hist;
        std::vector<Candidate<U>> cand;
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
          // One pass over the sites: channel-major keys and
          // histograms.
          keys.resize(width * size);
          hist.assign(width * kBuckets, 0);
          for (int64_t j = 0; j < size; ++j) {
            const T* f = features + int64_t{r[j]} * C + c_lo;
            for (int64_t c = 0; c < width; ++c) {
              const U key = Key(f[c], mode);
              keys[c * size + j] = key;
              ++hist[c * kBuckets + Bucket(key)];
            }
          }
          for (int64_t c = 0; c < width; ++c) {
            const int64_t* h = hist.data() + c * kBuckets;
            int64_t bucket = kBuckets - 1, above = 0;
            while (above + h[bucket] < k) above += h[bucket--];
            const U* key = keys.data() + c * size;
            bool* dst = keep + c_lo + c;
            cand.clear();
            for (int64_t j = 0; j < size; ++j) {
              const int64_t b = Bucket(key[j]);
              if (b > bucket) {
                dst[int64_t{r[j]} * C] = true;
              } else if (b == bucket) {
                cand.push_back({key[j], r[j]});
              }
            }
            const int64_t need = k - above;  // 0 < need <= cand.size()
            if (need < static_cast<int64_t>(cand.size())) {
              SelectBest(cand.data(), cand.data() + cand.size(), need);
            }
            for (int64_t j = 0; j < need; ++j)
              dst[int64_t{cand[j].row} * C] = true;
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
