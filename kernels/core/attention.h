// k-selection attention of the framework-free core (Hackel et al., Sec. 3.2):
// per batch item and channel keep the k strongest responses, or per batch
// item the k sites of largest L2 norm.
//
// Selection is O(n) per (batch item, channel) with std::nth_element under a
// total order (key descending, row ascending), so ties go to the lower row
// and the result is deterministic whatever the thread count. NaN keys rank
// as -inf (a strict order is what keeps nth_element in bounds).
#ifndef SPARSE_OPS_KERNELS_CORE_ATTENTION_H_
#define SPARSE_OPS_KERNELS_CORE_ATTENTION_H_

#include <cstdint>
#include <vector>

#include "kernels/core/parallel.h"
#include "kernels/core/status.h"

namespace sparse_ops {

enum class AttentionMode { kValue, kAbs };  // rank by value or by magnitude
enum class AttentionPer { kChannel, kSite };

// The rows of each batch item: rows[starts[b] .. starts[b + 1]) are the rows
// with batch index b, ascending. Coordinate rows need not be sorted.
struct BatchGroups {
  std::vector<int32_t> rows;
  std::vector<int64_t> starts;  // one more than the number of groups
  int64_t num_groups() const { return static_cast<int64_t>(starts.size()) - 1; }
};

// Groups the rows of coords [n, cols] by column 0, which must be >= 0
// (FindNegativeBatch). O(n) for sorted or dense batch indices.
BatchGroups GroupRowsByBatch(const int32_t* coords, int64_t n, int64_t cols);

// keep [n, channels]: whether each entry of features [n, channels] is among
// the k strongest of its (batch item, channel) (per == kChannel), or whether
// its site is among the k of largest L2 norm of its batch item (kSite; every
// channel of a kept site is kept). k >= 0.
template <typename T>
void AttentionKeep(const T* features, int64_t n, int64_t channels,
                   const BatchGroups& groups, int64_t k, AttentionMode mode,
                   AttentionPer per, bool* keep,
                   const ParallelFor& parallel_for);

// The rows of keep [n, channels] with at least one kept entry, ascending.
std::vector<int32_t> KeptRows(const bool* keep, int64_t n, int64_t channels,
                              const ParallelFor& parallel_for);

}  // namespace sparse_ops

#endif  // SPARSE_OPS_KERNELS_CORE_ATTENTION_H_
