// The core's only link to a thread pool: a parallel-for callback. The TF glue
// passes one backed by TensorFlow's intra-op pool; tests pass a serial one.
// Work is always split into units whose results do not depend on how the
// callback shards them, so every result is deterministic.
#ifndef SPARSE_OPS_KERNELS_CORE_PARALLEL_H_
#define SPARSE_OPS_KERNELS_CORE_PARALLEL_H_

#include <cstdint>
#include <functional>

namespace sparse_ops {

// Calls fn(begin, end) over disjoint ranges covering [0, n). cost_per_unit is
// a rough cycle count per unit that lets the pool choose the shard size.
using ParallelFor = std::function<void(
    int64_t n, int64_t cost_per_unit,
    const std::function<void(int64_t begin, int64_t end)>& fn)>;

inline void SerialFor(int64_t n, int64_t /*cost_per_unit*/,
                      const std::function<void(int64_t, int64_t)>& fn) {
  if (n > 0) fn(0, n);
}

}  // namespace sparse_ops

#endif  // SPARSE_OPS_KERNELS_CORE_PARALLEL_H_
