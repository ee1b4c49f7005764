// The CUDA side of the test programs' harness (kernels/core/test_harness.h:
// counted expectations, ASSERT_OK, TestResult): fatal CUDA errors and
// device buffers. Test programs only (nvcc).
#ifndef SPARSE_OPS_KERNELS_CUDA_GPU_TEST_HARNESS_H_
#define SPARSE_OPS_KERNELS_CUDA_GPU_TEST_HARNESS_H_

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/core/test_harness.h"

namespace {

#define CUDA_OK(expr)                                          \
  do {                                                         \
    const cudaError_t e_ = (expr);                             \
    if (e_ != cudaSuccess) {                                   \
      ::sparse_ops::testing::Fatal(                            \
          __FILE__, __LINE__,                                  \
          std::string(#expr) + ": " + cudaGetErrorString(e_)); \
    }                                                          \
  } while (0)

// --- Device buffers --------------------------------------------------------

template <typename T>
class DevBuf {
 public:
  DevBuf() = default;
  explicit DevBuf(size_t n) { Alloc(n); }
  explicit DevBuf(const std::vector<T>& v) { Upload(v); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  ~DevBuf() { Free(); }
  void Alloc(size_t n) {
    Free();
    n_ = n;
    CUDA_OK(cudaMalloc(&p_, std::max<size_t>(n, 1) * sizeof(T)));
  }
  void Free() {
    if (p_ != nullptr) cudaFree(p_);
    p_ = nullptr;
    n_ = 0;
  }
  void Upload(const std::vector<T>& v) {
    Alloc(v.size());
    if (!v.empty()) {
      CUDA_OK(cudaMemcpy(p_, v.data(), v.size() * sizeof(T),
                         cudaMemcpyHostToDevice));
    }
  }
  std::vector<T> Download() const {
    std::vector<T> v(n_);
    if (n_ > 0) {
      CUDA_OK(cudaMemcpy(v.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    }
    return v;
  }
  void Poison() {  // all ones: NaN for floats, -1 for ints
    CUDA_OK(cudaMemset(p_, 0xff, std::max<size_t>(n_, 1) * sizeof(T)));
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace

#endif  // SPARSE_OPS_KERNELS_CUDA_GPU_TEST_HARNESS_H_
