#include "kernels/core/voxelize.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "kernels/core/coordinates.h"
#include "kernels/core/isa.h"

namespace sparse_ops {
namespace {

constexpr int64_t kRowBlock =
    4096;  // fixed blocks: the first bad row is deterministic
constexpr int kDigitBits = 11;
constexpr int64_t kDigits = int64_t{1} << kDigitBits;

std::string Number(double v) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.9g", v);
  return buffer;
}

// Sorts keys[n] with their point indices rows[n] (stable, LSD radix over
// `key_bits`); tmp_keys / tmp_rows are scratch of n. The result is in the
// returned buffers (one of the two pairs).
std::pair<uint64_t*, int32_t*> RadixSortWithRows(uint64_t* keys, int32_t* rows,
                                                 uint64_t* tmp_keys,
                                                 int32_t* tmp_rows, int64_t n,
                                                 int key_bits) {
  std::vector<int64_t> start(kDigits);
  for (int shift = 0; shift < key_bits; shift += kDigitBits) {
    std::fill(start.begin(), start.end(), 0);
    for (int64_t i = 0; i < n; ++i) ++start[(keys[i] >> shift) & (kDigits - 1)];
    if (start[(keys[0] >> shift) & (kDigits - 1)] == n)
      continue;  // one digit value
    int64_t sum = 0;
    for (int64_t& s : start) {
      const int64_t count = s;
      s = sum;
      sum += count;
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t to = start[(keys[i] >> shift) & (kDigits - 1)]++;
      tmp_keys[to] = keys[i];
      tmp_rows[to] = rows[i];
    }
    std::swap(keys, tmp_keys);
    std::swap(rows, tmp_rows);
  }
  return {keys, rows};
}

}  // namespace

Status VoxelPointStatus(const VoxelPointError& e, const double* voxel_size) {
  const std::string row = "points row " + std::to_string(e.row);
  switch (e.problem) {
    case kVoxelPointOk: return Status::Ok();
    case kVoxelBadBatch:
      return Status::Error(
          row + " has batch index " + Number(e.value) +
          "; batch indices (column 0) must be whole numbers in [0, 2^31)");
    case kVoxelNonFinite:
      return Status::Error(row + " has a non-finite position " +
                           Number(e.value) + " in column " +
                           std::to_string(e.column));
    case kVoxelOutOfRange:
      return Status::Error(
          row + ": position " + Number(e.value) + " / voxel_size " +
          Number(voxel_size[e.column - 1]) + " = " + Number(e.quotient) +
          " lies outside the int32 range of coordinates; use a larger "
          "voxel_size");
  }
  return Status::Internal("voxelize: unknown point problem " +
                          std::to_string(e.problem));
}

template <typename P>
Status VoxelGrid(const P* points, int64_t n, int dims, const double* voxel_size,
                 int32_t* grid, const ParallelFor& parallel_for) {
  const int64_t blocks = (n + kRowBlock - 1) / kRowBlock;
  std::vector<int64_t> first_bad(blocks, -1);
  VectorizedFor(
      parallel_for, blocks, kRowBlock * dims * 20,
      [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          const int64_t hi = std::min(n, (b + 1) * kRowBlock);
          for (int64_t i = b * kRowBlock; i < hi; ++i) {
            if (GridRowOf(points, i, dims, voxel_size, grid + i * dims)
                    .problem != kVoxelPointOk) {
              first_bad[b] = i;
              break;
            }
          }
        }
      });
  for (int64_t b = 0; b < blocks; ++b) {
    if (first_bad[b] >= 0) {
      std::vector<int32_t> row(dims);
      return VoxelPointStatus(
          GridRowOf(points, first_bad[b], dims, voxel_size, row.data()),
          voxel_size);
    }
  }
  return Status::Ok();
}

Status FindVoxelSites(const int32_t* grid, int64_t n, int dims,
                      const Allocate& allocate, int32_t* inverse,
                      VoxelSites* sites, const ParallelFor& parallel_for) {
  int64_t* starts = AllocateArray<int64_t>(allocate, n + 1);
  int32_t* rows = AllocateArray<int32_t>(allocate, n);
  int32_t* tmp_rows = AllocateArray<int32_t>(allocate, n);
  if (starts == nullptr || rows == nullptr || tmp_rows == nullptr) {
    return Status::OutOfMemory("voxelize: no memory for sorting " +
                               std::to_string(n) + " points");
  }
  *sites = VoxelSites{rows, starts, 0};
  starts[0] = 0;
  if (n == 0) return Status::Ok();
  for (int64_t i = 0; i < n; ++i) rows[i] = static_cast<int32_t>(i);

  KeyPacker packer(dims);
  packer.CoverRows(grid, n);
  const int32_t* order = rows;
  const uint64_t* sorted_keys = nullptr;  // when the rows fit one key
  if (packer.Finalize().ok()) {
    uint64_t* keys = AllocateArray<uint64_t>(allocate, n);
    uint64_t* tmp_keys = AllocateArray<uint64_t>(allocate, n);
    if (keys == nullptr || tmp_keys == nullptr) {
      return Status::OutOfMemory("voxelize: no memory for the keys of " +
                                 std::to_string(n) + " points");
    }
    VectorizedFor(parallel_for, n, 10 * dims, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        packer.Pack(grid + i * dims, &keys[i]);
    });
    const auto sorted = RadixSortWithRows(keys, rows, tmp_keys, tmp_rows, n,
                                          std::max(packer.key_bits(), 1));
    sorted_keys = sorted.first;
    order = sorted.second;
  } else {
    // Rows too wide for one key: compare them (lexicographic, as np.unique).
    auto less = [&](int32_t a, int32_t b) {
      return std::lexicographical_compare(
          grid + int64_t{a} * dims, grid + int64_t{a} * dims + dims,
          grid + int64_t{b} * dims, grid + int64_t{b} * dims + dims);
    };
    std::stable_sort(rows, rows + n, less);
  }
  // Whether point order[j] lies at the site of order[j - 1].
  auto same_site = [&](int64_t j) {
    if (sorted_keys != nullptr) return sorted_keys[j] == sorted_keys[j - 1];
    return std::equal(grid + int64_t{order[j]} * dims,
                      grid + int64_t{order[j]} * dims + dims,
                      grid + int64_t{order[j - 1]} * dims);
  };
  int64_t num_sites = 0;
  for (int64_t j = 0; j < n; ++j) {
    if (j == 0 || !same_site(j)) starts[num_sites++] = j;
    inverse[order[j]] = static_cast<int32_t>(num_sites - 1);
  }
  starts[num_sites] = n;
  *sites = VoxelSites{order, starts, num_sites};
  return Status::Ok();
}

void VoxelCoordinates(const int32_t* grid, int dims, const VoxelSites& sites,
                      int32_t* coordinates, int32_t* counts,
                      const ParallelFor& parallel_for) {
  VectorizedFor(
      parallel_for, sites.num_sites, 4 * dims, [&](int64_t begin, int64_t end) {
        for (int64_t s = begin; s < end; ++s) {
          const int32_t* row =
              grid + int64_t{sites.order[sites.starts[s]]} * dims;
          std::copy(row, row + dims, coordinates + s * dims);
          counts[s] =
              static_cast<int32_t>(sites.starts[s + 1] - sites.starts[s]);
        }
      });
}

template <typename T>
void MergeVoxelFeatures(const T* features, int64_t channels,
                        const VoxelSites& sites, VoxelMode mode, T* merged,
                        int32_t* source, const ParallelFor& parallel_for) {
  const int64_t C = channels, m = sites.num_sites;
  if (m == 0 || C == 0) return;
  const int64_t avg = std::max<int64_t>(1, sites.starts[m] / m);
  VectorizedFor(parallel_for, m, avg * C * 4, [&](int64_t begin, int64_t end) {
    std::vector<double> sum(
        mode == VoxelMode::kSum || mode == VoxelMode::kAverage ? C : 0);
    for (int64_t s = begin; s < end; ++s) {
      const int32_t* points = sites.order + sites.starts[s];
      const int64_t count = sites.starts[s + 1] - sites.starts[s];
      T* out = merged + s * C;
      int32_t* src = source == nullptr ? nullptr : source + s * C;
      const T* first = features + int64_t{points[0]} * C;
      switch (mode) {
        case VoxelMode::kSum:
        case VoxelMode::kAverage: {
          // In double and in input order, as sparse_quantize's np.add.at.
          std::fill(sum.begin(), sum.end(), 0.0);
          for (int64_t j = 0; j < count; ++j) {
            const T* f = features + int64_t{points[j]} * C;
            for (int64_t c = 0; c < C; ++c) sum[c] += static_cast<double>(f[c]);
          }
          for (int64_t c = 0; c < C; ++c) {
            out[c] = static_cast<T>(mode == VoxelMode::kAverage ? sum[c] / count
                                                                : sum[c]);
          }
          break;
        }
        case VoxelMode::kMax:
          // The first point holding the maximum; NaN, once met, stays.
          for (int64_t c = 0; c < C; ++c) {
            out[c] = first[c];
            if (src != nullptr) src[c] = points[0];
          }
          for (int64_t j = 1; j < count; ++j) {
            const T* f = features + int64_t{points[j]} * C;
            for (int64_t c = 0; c < C; ++c) {
              if (!std::isnan(out[c]) && (std::isnan(f[c]) || f[c] > out[c])) {
                out[c] = f[c];
                if (src != nullptr) src[c] = points[j];
              }
            }
          }
          break;
        case VoxelMode::kFirst:
          for (int64_t c = 0; c < C; ++c) {
            out[c] = first[c];
            if (src != nullptr) src[c] = points[0];
          }
          break;
      }
    }
  });
}

#define SPARSE_OPS_INSTANTIATE(T)                                           \
  template Status VoxelGrid<T>(const T*, int64_t, int, const double*,       \
                               int32_t*, const ParallelFor&);               \
  template void MergeVoxelFeatures<T>(const T*, int64_t, const VoxelSites&, \
                                      VoxelMode, T*, int32_t*,              \
                                      const ParallelFor&);
SPARSE_OPS_INSTANTIATE(float)
SPARSE_OPS_INSTANTIATE(double)
#undef SPARSE_OPS_INSTANTIATE

}  // namespace sparse_ops
