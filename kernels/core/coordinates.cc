#include "kernels/core/coordinates.h"

#include <algorithm>
#include <atomic>
#include <limits>
#include <string>
#include <vector>

#include "kernels/core/isa.h"

namespace sparse_ops {
namespace {

int64_t FloorDiv(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

// Per-axis minimum and maximum of coords [n, dims] (zeros when n == 0).
void RowBounds(const int32_t* coords, int64_t n, int dims,
               std::vector<int64_t>* lo, std::vector<int64_t>* hi) {
  lo->assign(dims, 0);
  hi->assign(dims, 0);
  for (int64_t i = 0; i < n; ++i) {
    for (int a = 0; a < dims; ++a) {
      const int64_t v = coords[i * dims + a];
      if (i == 0 || v < (*lo)[a]) (*lo)[a] = v;
      if (i == 0 || v > (*hi)[a]) (*hi)[a] = v;
    }
  }
}

// The step of every offset, [K, dims] with the batch step 0 first:
// steps[k * dims + a] = offsets[k][a - 1] * stride[a - 1].
std::vector<int64_t> OffsetSteps(const KernelGeometry& g, int dims) {
  std::vector<int64_t> steps(g.num_offsets * dims, 0);
  for (int64_t k = 0; k < g.num_offsets; ++k) {
    for (int a = 1; a < dims; ++a) {
      steps[k * dims + a] =
          static_cast<int64_t>(g.offsets[k * (dims - 1) + a - 1]) *
          g.stride[a - 1];
    }
  }
  return steps;
}

// Widens the packer to rows [lo, hi] and to them shifted by every step:
// then a row c in [lo, hi] and each probe c + step pack, and KeyStep moves
// between their keys. Returns the first axis whose shifted range leaves
// int32, or -1.
int CoverShifted(const std::vector<int64_t>& lo, const std::vector<int64_t>& hi,
                 const std::vector<int64_t>& steps, KeyPacker* packer) {
  const int dims = packer->dims();
  const int64_t K = static_cast<int64_t>(steps.size()) / dims;
  for (int a = 0; a < dims; ++a) packer->Cover(a, lo[a], hi[a]);
  int outside = -1;
  if (K == 0) return outside;
  for (int a = 0; a < dims; ++a) {
    int64_t step_lo = steps[a], step_hi = steps[a];
    for (int64_t k = 1; k < K; ++k) {
      step_lo = std::min(step_lo, steps[k * dims + a]);
      step_hi = std::max(step_hi, steps[k * dims + a]);
    }
    const int64_t new_lo = lo[a] + step_lo, new_hi = hi[a] + step_hi;
    if (outside < 0 && (new_lo < std::numeric_limits<int32_t>::min() ||
                        new_hi > std::numeric_limits<int32_t>::max())) {
      outside = a;
    }
    packer->Cover(a, new_lo, new_hi);
  }
  return outside;
}

// A bitmap of the key range [0, 2^key_bits) with the bits of keys[0, n) set.
std::vector<uint64_t> KeyBitmap(const uint64_t* keys, int64_t n, int key_bits) {
  std::vector<uint64_t> bits(((uint64_t{1} << key_bits) + 63) / 64, 0);
  for (int64_t i = 0; i < n; ++i)
    bits[keys[i] >> 6] |= uint64_t{1} << (keys[i] & 63);
  return bits;
}

// Sorts keys[0, n), each below 2^key_bits, and moves the unique ones to the
// front. Large arrays: when the key range is small next to n (bounded grids,
// e.g. voxelized shapes), a bitmap of the range, read out in order: no sort
// at all; else an LSD radix sort (linear per 11-bit digit, digits shared by
// all keys skipped). Both are ~10x faster than std::sort on the 10^5-10^7
// candidate keys of a generative convolution.
int64_t SortUnique(uint64_t* keys, int64_t n, int key_bits) {
  constexpr int kDigitBits = 11;
  constexpr uint64_t kDigitMask = (uint64_t{1} << kDigitBits) - 1;
  if (n >= 4096 && key_bits < 40 &&
      (uint64_t{1} << key_bits) <= 64 * static_cast<uint64_t>(n)) {
    // The bitmap takes at most as many bytes as the keys themselves.
    const std::vector<uint64_t> bitmap = KeyBitmap(keys, n, key_bits);
    int64_t unique = 0;
    for (size_t w = 0; w < bitmap.size(); ++w) {
      for (uint64_t word = bitmap[w]; word != 0; word &= word - 1) {
        keys[unique++] =
            (static_cast<uint64_t>(w) << 6) | __builtin_ctzll(word);
      }
    }
    return unique;
  }
  if (n < 4096) {
    std::sort(keys, keys + n);
  } else {
    std::vector<uint64_t> buffer(n);
    std::vector<int64_t> start(kDigitMask + 1);
    uint64_t* from = keys;
    uint64_t* to = buffer.data();
    for (int shift = 0; shift < key_bits; shift += kDigitBits) {
      std::fill(start.begin(), start.end(), 0);
      for (int64_t i = 0; i < n; ++i) ++start[(from[i] >> shift) & kDigitMask];
      if (start[(from[0] >> shift) & kDigitMask] == n) continue;  // one digit
      int64_t sum = 0;
      for (int64_t& s : start) {
        const int64_t count = s;
        s = sum;
        sum += count;
      }
      for (int64_t i = 0; i < n; ++i) {
        to[start[(from[i] >> shift) & kDigitMask]++] = from[i];
      }
      std::swap(from, to);
    }
    if (from != keys) std::copy(from, from + n, keys);
  }
  return std::unique(keys, keys + n) - keys;
}

}  // namespace

KeyPacker::KeyPacker(int dims) : dims_(dims) {
  for (int a = 0; a < kMaxDims; ++a) {
    lo_[a] = std::numeric_limits<int64_t>::max();
    hi_[a] = std::numeric_limits<int64_t>::min();
  }
}

void KeyPacker::Cover(int axis, int64_t lo, int64_t hi) {
  lo_[axis] = std::min(lo_[axis], lo);
  hi_[axis] = std::max(hi_[axis], hi);
}

void KeyPacker::CoverRows(const int32_t* coords, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const int32_t* c = coords + i * dims_;
    for (int a = 0; a < dims_; ++a) {
      lo_[a] = std::min<int64_t>(lo_[a], c[a]);
      hi_[a] = std::max<int64_t>(hi_[a], c[a]);
    }
  }
}

Status KeyPacker::Finalize() {
  if (dims_ < 1 || dims_ > kMaxDims) {
    return Status::Error("coordinates have " + std::to_string(dims_) +
                         " columns; 2 to " + std::to_string(kMaxDims) +
                         " (batch + spatial axes) are supported");
  }
  SetKeyLayout(dims_, lo_, hi_, &layout_);
  if (layout_.total_bits > kMaxKeyBits) return KeyWidthStatus(layout_);
  return Status::Ok();
}

Status KeyWidthStatus(const KeyLayout& layout) {
  std::string widths;
  for (int a = 0; a < layout.dims; ++a) {
    widths += (a ? ", " : "") + std::to_string(layout.bits[a]);
  }
  return Status::Error(
      "coordinates span too large a range to pack into a 64-bit key: the "
      "axes (batch first) need " +
      widths + " bits, " + std::to_string(layout.total_bits) +
      " in total, more than " + std::to_string(kMaxKeyBits) +
      ". Use a larger voxel size, fewer dimensions, or coordinates that "
      "span a smaller range.");
}

uint64_t KeyPacker::KeyStep(const int64_t* step) const {
  uint64_t delta = 0;
  for (int a = 0; a < dims_; ++a) {
    delta += static_cast<uint64_t>(step[a]) << layout_.shift[a];
  }
  return delta;
}

int64_t CoordinateTable::CapacityFor(int64_t n) {
  int64_t capacity = 16;
  while (capacity < 2 * n) capacity <<= 1;
  return capacity;
}

Status CoordinateTable::Build(const int32_t* coords, int64_t n,
                              const KeyPacker& packer,
                              const ParallelFor& parallel_for) {
  std::fill(keys_, keys_ + mask_ + 1, kEmpty);
  std::fill(rows_, rows_ + mask_ + 1, -1);  // a duplicate waits for its row
  const int dims = packer.dims();
  // First problem found, as (row, other row); -1 when none.
  std::atomic<int64_t> bad_row{-1}, other_row{-1};
  VectorizedFor(parallel_for, n, 50, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      uint64_t key;
      if (!packer.Pack(coords + i * dims, &key)) {
        int64_t expected = -1;
        bad_row.compare_exchange_strong(expected, i);
        return;
      }
      uint64_t slot = HashKey(key) & mask_;
      while (true) {
        uint64_t expected = kEmpty;
        if (__atomic_compare_exchange_n(&keys_[slot], &expected, key, false,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
          __atomic_store_n(&rows_[slot], static_cast<int32_t>(i),
                           __ATOMIC_RELEASE);
          break;
        }
        if (expected == key) {  // duplicate site
          // The other row may still be writing its index; wait for it.
          int32_t other;
          while ((other = __atomic_load_n(&rows_[slot], __ATOMIC_ACQUIRE)) <
                 0) {
          }
          int64_t none = -1;
          if (bad_row.compare_exchange_strong(none, i)) other_row = other;
          return;
        }
        slot = (slot + 1) & mask_;
      }
    }
  });
  if (bad_row >= 0) {
    if (other_row < 0) {
      return Status::Error("coordinates row " + std::to_string(bad_row.load()) +
                           " lies outside the range the key was built for");
    }
    const int64_t a = std::min(bad_row.load(), other_row.load());
    const int64_t b = std::max(bad_row.load(), other_row.load());
    std::string site;
    for (int d = 0; d < dims; ++d) {
      site += (d ? ", " : "") + std::to_string(coords[a * dims + d]);
    }
    return Status::Error("coordinates has duplicate sites: rows " +
                         std::to_string(a) + " and " + std::to_string(b) +
                         " are both [" + site +
                         "]; merge duplicates first, e.g. with "
                         "sparse_ops.utils.sparse_quantize");
  }
  return Status::Ok();
}

bool IsSymmetric(const KernelGeometry& g, int dims) {
  return IsSymmetricOffsets(g.offsets, g.num_offsets, dims - 1);
}

void FindNeighbours(const CoordinateTable& in_table, const KeyPacker& packer,
                    const int32_t* out_coords, int64_t n_out,
                    const KernelGeometry& g, bool same_coordinates,
                    int32_t* neighbours, int64_t* counts,
                    const ParallelFor& parallel_for) {
  const int dims = packer.dims();
  const int64_t K = g.num_offsets;
  const bool mirror = same_coordinates && IsSymmetric(g, dims);
  // With mirroring, offsets k < K/2 are probed and k' = K-1-k filled from
  // them; the centre (K odd) is the identity.
  const int64_t probed = mirror ? K / 2 : K;
  if (mirror) {
    std::fill(neighbours + (K - probed) * n_out, neighbours + K * n_out, -1);
  }
  const std::vector<int64_t> steps = OffsetSteps(g, dims);
  constexpr int64_t kRowsPerUnit = 64;
  const int64_t units = (n_out + kRowsPerUnit - 1) / kRowsPerUnit;
  std::vector<int64_t> unit_counts(units * probed, 0);
  VectorizedFor(
      parallel_for, units, 40 * probed * kRowsPerUnit,
      [&](int64_t begin, int64_t end) {
        std::vector<uint64_t> keys(probed);
        std::vector<char> valid(probed);
        int64_t q[kMaxDims];
        for (int64_t u = begin; u < end; ++u) {
          int64_t* unit_count = unit_counts.data() + u * probed;
          const int64_t o_end = std::min(n_out, (u + 1) * kRowsPerUnit);
          for (int64_t o = u * kRowsPerUnit; o < o_end; ++o) {
            const int32_t* c = out_coords + o * dims;
            // Compute every probe's key first and prefetch its slot, so the
            // table's cache misses overlap instead of queueing.
            for (int64_t k = 0; k < probed; ++k) {
              for (int a = 0; a < dims; ++a) q[a] = c[a] + steps[k * dims + a];
              valid[k] = packer.Pack(q, &keys[k]);
              if (valid[k]) in_table.Prefetch(keys[k]);
            }
            for (int64_t k = 0; k < probed; ++k) {
              const int32_t i = valid[k] ? in_table.Find(keys[k]) : -1;
              neighbours[k * n_out + o] = i;
              if (i < 0) continue;
              ++unit_count[k];
              // Unique coordinates: row i is reached from one o per offset, so
              // the mirrored writes never collide.
              if (mirror) neighbours[(K - 1 - k) * n_out + i] = o;
            }
            if (mirror && K % 2 == 1) neighbours[(K / 2) * n_out + o] = o;
          }
        }
      });
  if (counts == nullptr) return;
  for (int64_t k = 0; k < K; ++k) counts[k] = 0;
  for (int64_t u = 0; u < units; ++u) {
    for (int64_t k = 0; k < probed; ++k)
      counts[k] += unit_counts[u * probed + k];
  }
  if (mirror) {
    // Offset K-1-k pairs are offset k's reversed; the centre pairs every row.
    for (int64_t k = 0; k < probed; ++k) counts[K - 1 - k] = counts[k];
    if (K % 2 == 1) counts[K / 2] = n_out;
  }
}

namespace {

constexpr int64_t kRowsPerUnit = 512;  // output rows per unit of work

// Neighbours from a bitmap of the (strictly increasing) input keys and the
// number of set bits before each word: a probe's input row is its rank, so
// a probe is a bit test and a popcount, no search. Offset k < probed fills
// table row k; with `mirror`, a pair (i, o) of offset k also fills row
// K-1-k at i with o (FindNeighboursSorted).
void RankBitmapNeighbours(const uint64_t* in_keys, int64_t n_in,
                          const uint64_t* out_keys, int64_t n_out, int key_bits,
                          const std::vector<uint64_t>& key_steps, int64_t K,
                          bool mirror, int32_t* neighbours,
                          int64_t* unit_counts,
                          const ParallelFor& parallel_for) {
  const int64_t probed = static_cast<int64_t>(key_steps.size());
  const std::vector<uint64_t> bits = KeyBitmap(in_keys, n_in, key_bits);
  std::vector<int32_t> rank(bits.size());
  int64_t before = 0;
  for (size_t w = 0; w < bits.size(); ++w) {
    rank[w] = static_cast<int32_t>(before);
    before += __builtin_popcountll(bits[w]);
  }
  const int64_t units = (n_out + kRowsPerUnit - 1) / kRowsPerUnit;
  VectorizedFor(
      parallel_for, units, 4 * probed * kRowsPerUnit,
      [&](int64_t begin, int64_t end) {
        for (int64_t u = begin; u < end; ++u) {
          const int64_t o_begin = u * kRowsPerUnit;
          const int64_t o_end = std::min(n_out, o_begin + kRowsPerUnit);
          for (int64_t k = 0; k < probed; ++k) {
            int32_t* row = neighbours + k * n_out;
            int32_t* mirrored =
                mirror ? neighbours + (K - 1 - k) * n_out : nullptr;
            int64_t count = 0;
            for (int64_t o = o_begin; o < o_end; ++o) {
              const uint64_t probe = out_keys[o] + key_steps[k];
              const uint64_t word = bits[probe >> 6];
              const uint64_t bit = uint64_t{1} << (probe & 63);
              const bool found = (word & bit) != 0;
              const int32_t i =
                  rank[probe >> 6] + __builtin_popcountll(word & (bit - 1));
              row[o] = found ? i : -1;
              if (mirror && found) mirrored[i] = static_cast<int32_t>(o);
              count += found;
            }
            unit_counts[u * probed + k] = count;
          }
        }
      });
}

}  // namespace

bool FindNeighboursSorted(const int32_t* in_coords, int64_t n_in,
                          const int32_t* out_coords, int64_t n_out, int dims,
                          const KernelGeometry& g, int32_t* neighbours,
                          int64_t* counts, const ParallelFor& parallel_for,
                          bool* mirrored) {
  const int64_t K = g.num_offsets;
  const std::vector<int64_t> steps = OffsetSteps(g, dims);
  // The same rows on both sides (a submanifold map): one set of keys.
  const bool same = in_coords == out_coords && n_in == n_out;
  // One key layout covering the inputs and every probe of every output.
  KeyPacker packer(dims);
  std::vector<int64_t> lo, hi;
  RowBounds(out_coords, n_out, dims, &lo, &hi);
  if (!same) {
    packer.CoverRows(in_coords, n_in);
  } else if (n_in > 0) {
    for (int a = 0; a < dims; ++a) packer.Cover(a, lo[a], hi[a]);
  }
  if (n_out > 0) CoverShifted(lo, hi, steps, &packer);
  if (!packer.Finalize().ok()) return false;

  // Keys of both sets; each must be strictly increasing.
  auto increasing_keys = [&](const int32_t* coords, int64_t n,
                             std::vector<uint64_t>* keys) {
    keys->resize(n);
    uint64_t* k = keys->data();
    VectorizedFor(parallel_for, n, 10 * dims, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        packer.Pack(coords + i * dims, &k[i]);
    });
    for (int64_t i = 1; i < n; ++i) {
      if (k[i] <= k[i - 1]) return false;
    }
    return true;
  };
  std::vector<uint64_t> in_keys, other_out_keys;
  if (!increasing_keys(in_coords, n_in, &in_keys) ||
      (!same && !increasing_keys(out_coords, n_out, &other_out_keys))) {
    return false;
  }
  const std::vector<uint64_t>& out_keys = same ? in_keys : other_out_keys;
  // The same rows on both sides with symmetric offsets (a submanifold
  // convolution): offsets k < K/2 are probed; a pair (i, o) of offset k is
  // the pair (o, i) of offset K-1-k, written as it is found; the centre
  // (K odd) pairs every row with itself.
  const bool mirror = same && IsSymmetric(g, dims);
  const int64_t probed = mirror ? K / 2 : K;
  if (mirrored != nullptr) *mirrored = mirror;
  // Without `mirrored`, the table's mirrored rows are written here: the
  // probe of a pair (i, o) of offset k also writes row K-1-k at i.
  const bool write_mirrored = mirror && mirrored == nullptr;
  if (write_mirrored) {
    std::fill(neighbours + (K - probed) * n_out, neighbours + K * n_out, -1);
    if (K % 2 == 1) {
      int32_t* centre = neighbours + (K / 2) * n_out;
      for (int64_t o = 0; o < n_out; ++o) centre[o] = static_cast<int32_t>(o);
    }
  }
  std::vector<uint64_t> key_steps(probed);
  for (int64_t k = 0; k < probed; ++k)
    key_steps[k] = packer.KeyStep(&steps[k * dims]);
  const int64_t units = (n_out + kRowsPerUnit - 1) / kRowsPerUnit;
  std::vector<int64_t> unit_counts(units * probed, 0);

  // A bounded grid (key range at most 128 per row) takes the rank bitmap:
  // ~2x faster than the merge at 64^3; it holds 3/16 byte per key of the
  // range (bitmap + ranks), at most 24 bytes per row.
  const int key_bits = packer.key_bits();
  const bool small_range =
      key_bits <= 36 &&
      (uint64_t{1} << key_bits) <= 128 * static_cast<uint64_t>(n_in + n_out);
  if (small_range) {
    RankBitmapNeighbours(in_keys.data(), n_in, out_keys.data(), n_out, key_bits,
                         key_steps, K, write_mirrored, neighbours,
                         unit_counts.data(), parallel_for);
  } else {
    // Else a merge per offset: its probes are sorted like the input keys.
    const uint64_t* in_begin = in_keys.data();
    const uint64_t* in_end = in_begin + n_in;
    VectorizedFor(
        parallel_for, units, 8 * probed * kRowsPerUnit,
        [&](int64_t begin, int64_t end) {
          for (int64_t u = begin; u < end; ++u) {
            const int64_t o_begin = u * kRowsPerUnit;
            const int64_t o_end = std::min(n_out, o_begin + kRowsPerUnit);
            for (int64_t k = 0; k < probed; ++k) {
              const uint64_t step = key_steps[k];
              int32_t* row = neighbours + k * n_out;
              int32_t* mirror_row =
                  write_mirrored ? neighbours + (K - 1 - k) * n_out : nullptr;
              const uint64_t* i =
                  std::lower_bound(in_begin, in_end, out_keys[o_begin] + step);
              int64_t count = 0;
              for (int64_t o = o_begin; o < o_end; ++o) {
                const uint64_t probe = out_keys[o] + step;
                while (i != in_end && *i < probe) ++i;
                const bool found = i != in_end && *i == probe;
                row[o] = found ? static_cast<int32_t>(i - in_begin) : -1;
                if (write_mirrored && found) {
                  mirror_row[i - in_begin] = static_cast<int32_t>(o);
                }
                count += found;
              }
              unit_counts[u * probed + k] = count;
            }
          }
        });
  }
  if (counts != nullptr) {
    for (int64_t k = 0; k < K; ++k) counts[k] = 0;
    for (int64_t u = 0; u < units; ++u) {
      for (int64_t k = 0; k < probed; ++k)
        counts[k] += unit_counts[u * probed + k];
    }
    if (mirror) {
      for (int64_t k = 0; k < probed; ++k) counts[K - 1 - k] = counts[k];
      if (K % 2 == 1) counts[K / 2] = n_out;
    }
  }
  return true;
}

void MirrorPairs(const int64_t* splits, int64_t K, int64_t n, int32_t* in_rows,
                 int32_t* out_rows, const ParallelFor& parallel_for) {
  VectorizedFor(
      parallel_for, K - K / 2, 2 * n, [&](int64_t begin, int64_t end) {
        for (int64_t m = K / 2 + begin; m < K / 2 + end; ++m) {
          int32_t* in = in_rows + splits[m];
          int32_t* out = out_rows + splits[m];
          if (K % 2 == 1 && m == K / 2) {  // the centre
            for (int64_t o = 0; o < n; ++o)
              in[o] = out[o] = static_cast<int32_t>(o);
            continue;
          }
          const int64_t k = K - 1 - m, count = splits[k + 1] - splits[k];
          std::copy(out_rows + splits[k], out_rows + splits[k] + count, in);
          std::copy(in_rows + splits[k], in_rows + splits[k] + count, out);
        }
      });
}

void SplitsFromCounts(const int64_t* counts, int64_t K, int64_t* splits) {
  splits[0] = 0;
  for (int64_t k = 0; k < K; ++k) splits[k + 1] = splits[k] + counts[k];
}

void CountPairs(const int32_t* neighbours, int64_t K, int64_t n_out,
                int64_t* splits, const ParallelFor& parallel_for) {
  std::vector<int64_t> counts(K, 0);
  VectorizedFor(parallel_for, K, 2 * n_out, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int32_t* row = neighbours + k * n_out;
      int64_t count = 0;
      for (int64_t o = 0; o < n_out; ++o) count += row[o] >= 0;
      counts[k] = count;
    }
  });
  SplitsFromCounts(counts.data(), K, splits);
}

void FillPairs(const int32_t* neighbours, int64_t K, int64_t n_out,
               const int64_t* splits, int32_t* in_rows, int32_t* out_rows,
               const ParallelFor& parallel_for) {
  VectorizedFor(parallel_for, K, 3 * n_out, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int32_t* row = neighbours + k * n_out;
      // Branch-free (about half the entries are found, in no pattern): each
      // entry is written at p, which moves on only past a found one; the
      // loop stops once the offset's pairs are all written, so it never
      // writes past them.
      int64_t p = splits[k];
      const int64_t end = splits[k + 1];
      for (int64_t o = 0; o < n_out && p < end; ++o) {
        in_rows[p] = row[o];
        out_rows[p] = static_cast<int32_t>(o);
        p += row[o] >= 0;
      }
    }
  });
}

Status ValidateKernelMap(const KernelMapView& map, int64_t num_pairs,
                         int64_t n_in, int64_t n_out,
                         const ParallelFor& parallel_for) {
  const int64_t K = map.num_offsets;
  if (map.splits[0] != 0 || map.splits[K] != num_pairs) {
    return Status::Error(
        "kernel map offset_splits must start at 0 and end at "
        "the number of pairs " +
        std::to_string(num_pairs));
  }
  for (int64_t k = 0; k < K; ++k) {
    if (map.splits[k + 1] < map.splits[k]) {
      return Status::Error("kernel map offset_splits must be non-decreasing");
    }
  }
  std::atomic<int64_t> bad_pair{-1};
  VectorizedFor(parallel_for, K, 1000, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      int64_t last_out = -1;
      for (int64_t p = map.splits[k]; p < map.splits[k + 1]; ++p) {
        const int64_t i = map.in_rows[p], o = map.out_rows[p];
        if (i < 0 || i >= n_in || o <= last_out || o >= n_out) {
          int64_t none = -1;
          bad_pair.compare_exchange_strong(none, p);
          return;
        }
        last_out = o;
      }
    }
  });
  if (bad_pair >= 0) {
    const int64_t p = bad_pair;
    return Status::Error(
        "kernel map pair " + std::to_string(p) + " (in row " +
        std::to_string(map.in_rows[p]) + ", out row " +
        std::to_string(map.out_rows[p]) + ") is out of range for " +
        std::to_string(n_in) + " input and " + std::to_string(n_out) +
        " output rows, or out rows are not increasing within an offset");
  }
  return Status::Ok();
}

Status TransposedNeighbours(const KernelMapView& map, int64_t n_in,
                            int32_t* table, const ParallelFor& parallel_for) {
  std::atomic<int64_t> repeated{-1};
  VectorizedFor(
      parallel_for, map.num_offsets, 3 * n_in, [&](int64_t begin, int64_t end) {
        for (int64_t k = begin; k < end; ++k) {
          int32_t* row = table + k * n_in;
          std::fill(row, row + n_in, -1);
          for (int64_t p = map.splits[k]; p < map.splits[k + 1]; ++p) {
            int32_t& slot = row[map.in_rows[p]];
            if (slot >= 0) {
              // The smallest repeat over all offsets: the same pair every run.
              int64_t cur = repeated.load();
              while ((cur < 0 || cur > p) &&
                     !repeated.compare_exchange_weak(cur, p)) {
              }
              break;
            }
            slot = map.out_rows[p];
          }
        }
      });
  if (repeated >= 0) {
    return Status::Error(
        "kernel map pair " + std::to_string(repeated.load()) +
        " repeats input row " + std::to_string(map.in_rows[repeated.load()]) +
        " within one offset; a kernel map pairs each input row at most once "
        "per offset");
  }
  return Status::Ok();
}

bool TransposeUsesTable(const KernelMapView& map, int64_t n_in) {
  // The budget follows the pairs, not n_in: a row count is all it takes to
  // ask for many input rows.
  return map.num_offsets <=
         OffsetsPerChunk(map.num_offsets, n_in,
                         TableBudget(map.splits[map.num_offsets]));
}

Status TransposeKernelMap(const KernelMapView& map, int64_t n_in,
                          int32_t* table, uint64_t* pairs, int64_t* t_splits,
                          int32_t* t_in, int32_t* t_out,
                          const ParallelFor& parallel_for) {
  const int64_t K = map.num_offsets;
  if (table != nullptr) {
    const Status status = TransposedNeighbours(map, n_in, table, parallel_for);
    if (!status.ok()) return status;
    CountPairs(table, K, n_in, t_splits, parallel_for);
    FillPairs(table, K, n_in, t_splits, t_in, t_out, parallel_for);
    return Status::Ok();
  }
  // Each offset's pairs as (in row, out row) keys, sorted: memory follows
  // the pairs, not K * n_in.
  std::copy(map.splits, map.splits + K + 1, t_splits);
  std::atomic<int64_t> repeated{-1};
  VectorizedFor(parallel_for, K, 1000, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t first = map.splits[k], last = map.splits[k + 1];
      for (int64_t p = first; p < last; ++p) {
        pairs[p] = (static_cast<uint64_t>(map.in_rows[p]) << 32) |
                   static_cast<uint32_t>(map.out_rows[p]);
      }
      std::sort(pairs + first, pairs + last);
      for (int64_t p = first; p < last; ++p) {
        t_out[p] = static_cast<int32_t>(pairs[p] >> 32);
        t_in[p] = static_cast<int32_t>(pairs[p] & 0xffffffffu);
        if (p > first && t_out[p] == t_out[p - 1]) {
          int64_t none = -1;
          repeated.compare_exchange_strong(none, p);
        }
      }
    }
  });
  if (repeated >= 0) {
    const int64_t p = repeated;
    return Status::Error(
        "kernel map repeats input row " + std::to_string(t_out[p]) +
        " within one offset; a kernel map pairs each input row "
        "at most once per offset");
  }
  return Status::Ok();
}

Status StridedKeys(const int32_t* coords, int64_t n, int dims,
                   const int32_t* stride, KeyPacker* packer, uint64_t* keys,
                   int64_t* num_unique) {
  for (int a = 1; a < dims; ++a) {
    if (stride[a - 1] < 1) {
      return Status::Error("stride must be positive, got " +
                           std::to_string(stride[a - 1]));
    }
  }
  std::vector<int64_t> lo, hi;
  RowBounds(coords, n, dims, &lo, &hi);
  if (n > 0) {
    // floor(c / s) * s is monotone in c: its range follows from the bounds.
    for (int a = 0; a < dims; ++a) {
      const int64_t s = a == 0 ? 1 : stride[a - 1];
      const int64_t new_lo = FloorDiv(lo[a], s) * s;
      if (new_lo < std::numeric_limits<int32_t>::min()) {
        return Status::Error("strided coordinates of axis " +
                             std::to_string(a) + " fall below the int32 range");
      }
      packer->Cover(a, new_lo, FloorDiv(hi[a], s) * s);
    }
  }
  Status status = packer->Finalize();
  if (!status.ok()) return status;
  int64_t q[kMaxDims];
  for (int64_t i = 0; i < n; ++i) {
    const int32_t* c = coords + i * dims;
    q[0] = c[0];
    for (int a = 1; a < dims; ++a) {
      const int64_t s = stride[a - 1];
      q[a] = FloorDiv(c[a], s) * s;
    }
    packer->Pack(q, &keys[i]);
  }
  *num_unique = SortUnique(keys, n, packer->key_bits());
  return Status::Ok();
}

namespace {

// How many of the sorted unique keys b[0, n) are in the sorted unique a.
int64_t CountCommon(const std::vector<uint64_t>& a, const uint64_t* b,
                    int64_t n) {
  int64_t common = 0;
  for (int64_t i = 0, j = 0; i < static_cast<int64_t>(a.size()) && j < n;) {
    if (a[i] < b[j]) {
      ++i;
    } else if (b[j] < a[i]) {
      ++j;
    } else {
      ++common, ++i, ++j;
    }
  }
  return common;
}

}  // namespace

Status GenerativeKeys(const int32_t* coords, int64_t n, int dims,
                      const KernelGeometry& g, int64_t budget,
                      int64_t max_sites, KeyPacker* packer,
                      std::vector<uint64_t>* keys,
                      const ParallelFor& parallel_for) {
  const int64_t K = g.num_offsets;
  const std::vector<int64_t> steps = OffsetSteps(g, dims);
  std::vector<int64_t> lo, hi;
  RowBounds(coords, n, dims, &lo, &hi);
  if (n > 0) {
    const int outside = CoverShifted(lo, hi, steps, packer);
    if (outside >= 0) {
      return Status::Error("generated coordinates of axis " +
                           std::to_string(outside) +
                           " would overflow the int32 range");
    }
  }
  Status status = packer->Finalize();
  if (!status.ok()) return status;
  std::vector<uint64_t> key_steps(K);
  for (int64_t k = 0; k < K; ++k)
    key_steps[k] = packer->KeyStep(&steps[k * dims]);
  const int64_t chunk = OffsetsPerChunk(K, n, budget);
  std::vector<uint64_t> candidates(n * std::min(chunk, K)), merged;
  keys->clear();
  for (int64_t k0 = 0; k0 < K; k0 += chunk) {
    const int64_t kc = std::min(chunk, K - k0);
    VectorizedFor(parallel_for, n, 5 * kc, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        uint64_t key = 0;
        packer->Pack(coords + i * dims, &key);  // covered: cannot fail
        for (int64_t k = 0; k < kc; ++k) {
          candidates[i * kc + k] = key + key_steps[k0 + k];
        }
      }
    });
    const int64_t unique =
        SortUnique(candidates.data(), n * kc, packer->key_bits());
    // Stop before the keys outgrow what the output may hold.
    const int64_t have = static_cast<int64_t>(keys->size());
    if (have + unique >= max_sites &&
        have + unique - CountCommon(*keys, candidates.data(), unique) >=
            max_sites) {
      return Status::Error(
          "generative convolution would create too many sites (" +
          std::to_string(max_sites) + " or more)");
    }
    if (k0 == 0) {
      keys->assign(candidates.begin(), candidates.begin() + unique);
      continue;
    }
    merged.resize(keys->size() + unique);
    merged.resize(std::set_union(keys->begin(), keys->end(), candidates.begin(),
                                 candidates.begin() + unique, merged.begin()) -
                  merged.begin());
    keys->swap(merged);
  }
  return Status::Ok();
}

void UnpackKeys(const KeyPacker& packer, const uint64_t* keys, int64_t n,
                int32_t* coords, const ParallelFor& parallel_for) {
  const int dims = packer.dims();
  VectorizedFor(parallel_for, n, 10 * dims, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      packer.Unpack(keys[i], coords + i * dims);
    }
  });
}

int64_t FindNegativeBatch(const int32_t* coords, int64_t n, int dims) {
  for (int64_t i = 0; i < n; ++i) {
    if (coords[i * dims] < 0) return i;
  }
  return -1;
}

}  // namespace sparse_ops
