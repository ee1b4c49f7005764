// Temporary memory the core asks its caller for (TensorFlow's allocator in
// an op, so that temporaries are accounted and reused like TensorFlow's).
#ifndef SPARSE_OPS_KERNELS_CORE_ALLOCATE_H_
#define SPARSE_OPS_KERNELS_CORE_ALLOCATE_H_

#include <cstdint>
#include <functional>

namespace sparse_ops {

// `bytes` aligned to 64, alive as long as the caller's object that asked;
// nullptr when there is none (the core then fails with OutOfMemory).
using Allocate = std::function<void*(int64_t bytes)>;

// n values of type U from `allocate` (nullptr without memory or on overflow).
template <typename U>
U* AllocateArray(const Allocate& allocate, int64_t n) {
  if (n < 0 || n > INT64_MAX / static_cast<int64_t>(sizeof(U))) return nullptr;
  return static_cast<U*>(allocate(n * static_cast<int64_t>(sizeof(U))));
}

}  // namespace sparse_ops

#endif  // SPARSE_OPS_KERNELS_CORE_ALLOCATE_H_
