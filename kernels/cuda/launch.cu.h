// Launch helpers shared by the CUDA core's files (nvcc only): workspace
// carving, launch and workspace errors, grid sizes, and the offset of a
// pair in a kernel map.
#ifndef SPARSE_OPS_KERNELS_CUDA_LAUNCH_CU_H_
#define SPARSE_OPS_KERNELS_CUDA_LAUNCH_CU_H_

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "kernels/core/status.h"

namespace sparse_ops {
namespace gpu {

using ull = unsigned long long;

constexpr ull kNone = ~0ull;  // "no row" in 64-bit result fields
constexpr int kThreads = 256;
constexpr int64_t kMaxSortItems = 2147483647;  // CUB's int item counts

// An int32 max for CUB scans (cub::Max left CUB in CUDA 13, for
// cuda::maximum, which CUDA 12 lacks).
struct MaxOf {
  __device__ __forceinline__ int32_t operator()(int32_t a, int32_t b) const {
    return a > b ? a : b;
  }
};

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// a * b for counts >= 0, or -1 when it overflows (Carver::Take saturates).
inline int64_t CountProduct(int64_t a, int64_t b) {
  int64_t product;
  return __builtin_mul_overflow(a, b, &product) ? -1 : product;
}

// Carves one workspace into 256-byte aligned buffers; with a null base it
// only counts bytes (the *WorkspaceBytes functions).
class Carver {
 public:
  explicit Carver(void* base) : base_(static_cast<char*>(base)) {}
  // n entries of U, rounded up to 256 bytes; sizes that overflow saturate
  // at SIZE_MAX, which no workspace has (CheckWorkspace then fails).
  // n entries of U (n < 0: an overflowed count), rounded up to 256 bytes;
  // sizes that overflow saturate at SIZE_MAX, which no workspace has
  // (CheckWorkspace then fails), and give nullptr.
  template <typename U>
  U* Take(int64_t n) {
    size_t bytes;
    if (n < 0 ||
        __builtin_mul_overflow(static_cast<size_t>(std::max<int64_t>(n, 1)),
                               sizeof(U), &bytes)) {
      bytes = SIZE_MAX;
    }
    return static_cast<U*>(TakeBytes(bytes));
  }
  void* TakeBytes(size_t bytes) {
    if (used_ == SIZE_MAX) return nullptr;
    void* p = base_ == nullptr ? nullptr : base_ + used_;
    if (__builtin_add_overflow(bytes, size_t{255}, &bytes) ||
        __builtin_add_overflow(used_, bytes & ~size_t{255}, &used_)) {
      used_ = SIZE_MAX;
      return nullptr;
    }
    return p;
  }
  size_t used() const { return used_; }

 private:
  char* base_;
  size_t used_ = 0;
};

inline Status LaunchStatus(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return Status::Ok();
  return Status::Internal(std::string("CUDA error in sparse_ops ") + what +
                          ": " + cudaGetErrorString(e));
}

inline Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::Ok();
  return Status::Internal(std::string("CUDA error in sparse_ops ") + what +
                          ": " + cudaGetErrorString(e));
}

inline Status CheckWorkspace(size_t have, size_t need, const char* what) {
  if (have >= need) return Status::Ok();
  return Status::Internal(std::string("sparse_ops ") + what + " needs " +
                          std::to_string(need) + " bytes of workspace, got " +
                          std::to_string(have));
}

inline int GridFor(int64_t n, int64_t max_blocks = 4096) {
  return static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(CeilDiv(n, kThreads), max_blocks)));
}

// A grid-stride loop over i in [0, n) (int64 indices).
#define SPARSE_OPS_GRID_STRIDE(i, n)                                    \
  for (int64_t i =                                                      \
           static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; \
       i < (n); i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// The offset of pair p: the largest k with splits[k] <= p (clamped).
__device__ __forceinline__ int64_t OffsetOf(const int64_t* __restrict__ splits,
                                            int64_t K, int64_t p) {
  int64_t lo = 0, hi = K;  // answer in [lo, hi)
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (splits[mid] <= p) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

}  // namespace gpu
}  // namespace sparse_ops

#endif  // SPARSE_OPS_KERNELS_CUDA_LAUNCH_CU_H_
