#include "kernels/core/pool.h"

#include <algorithm>
#include <atomic>
#include <string>

namespace sparse_ops {

namespace {

// Fixed blocks, whatever the thread count.
constexpr int64_t kPairBlock = 256;
constexpr int64_t kRowBlock = 4096;
// 16 channels: a whole cache line of floats per unit, so that units never
// write to the same line.
constexpr int64_t kChannelBlock = 16;

int64_t NumBlocks(int64_t n, int64_t block) { return (n + block - 1) / block; }

}  // namespace

template <typename T>
void SparseMaxPool(const T* in, int64_t channels, const KernelMapView& map,
                   int64_t n_out, T* out, int32_t* argmax,
                   const ParallelFor& parallel_for) {
  const int64_t C = channels;
  parallel_for(NumBlocks(n_out, kRowBlock), kRowBlock * C,
               [&](int64_t begin, int64_t end) {
                 const int64_t lo = begin * kRowBlock;
                 const int64_t hi = std::min(n_out, end * kRowBlock);
                 std::fill(out + lo * C, out + hi * C, T(0));
                 std::fill(argmax + lo * C, argmax + hi * C, int32_t{-1});
               });
  if (C == 0) return;
  for (int64_t k = 0; k < map.num_offsets; ++k) {
    const int64_t first = map.splits[k], last = map.splits[k + 1];
    const int64_t pairs = last - first;
    parallel_for(
        NumBlocks(pairs, kPairBlock), kPairBlock * C * 4,
        [&](int64_t begin, int64_t end) {
          const int64_t p_end = std::min(last, first + end * kPairBlock);
          for (int64_t p = first + begin * kPairBlock; p < p_end; ++p) {
            const int32_t i = map.in_rows[p];
            const int64_t o = map.out_rows[p];
            const T* src = in + int64_t{i} * C;
            T* dst = out + o * C;
            int32_t* arg = argmax + o * C;
            // Branch-free (random data defeats branch prediction); strict
            // >: ties keep the earlier offset.
            for (int64_t c = 0; c < C; ++c) {
              const T v = src[c], cur = dst[c];
              const int32_t a = arg[c];
              const bool take = (a < 0) | (v > cur);
              dst[c] = take ? v : cur;
              arg[c] = take ? i : a;
            }
          }
        });
  }
}

Status ValidateArgmax(const int32_t* argmax, int64_t n, int64_t n_in,
                      const ParallelFor& parallel_for) {
  std::atomic<int64_t> bad{-1};
  parallel_for(NumBlocks(n, kRowBlock), kRowBlock,
               [&](int64_t begin, int64_t end) {
                 const int64_t hi = std::min(n, end * kRowBlock);
                 for (int64_t j = begin * kRowBlock; j < hi; ++j) {
                   if (argmax[j] < -1 || argmax[j] >= n_in) {
                     // Keep the smallest bad index for a stable message.
                     int64_t cur = bad.load();
                     while ((cur < 0 || cur > j) &&
                            !bad.compare_exchange_weak(cur, j)) {
                     }
                     return;
                   }
                 }
               });
  const int64_t j = bad.load();
  if (j < 0) return Status::Ok();
  return Status::Error("argmax entry " + std::to_string(j) + " is " +
                       std::to_string(argmax[j]) + ", out of range [-1, " +
                       std::to_string(n_in) + ")");
}

template <typename T>
void SparseMaxPoolGrad(const T* grad_out, const int32_t* argmax,
                       int64_t channels, int64_t n_out, int64_t n_in,
                       T* grad_in, const ParallelFor& parallel_for) {
  const int64_t C = channels;
  parallel_for(NumBlocks(n_in, kRowBlock), kRowBlock * C,
               [&](int64_t begin, int64_t end) {
                 const int64_t hi = std::min(n_in, end * kRowBlock);
                 std::fill(grad_in + begin * kRowBlock * C, grad_in + hi * C,
                           T(0));
               });
  if (C == 0) return;
  // Each channel block is one unit walking all output rows in order, so
  // every sum is taken in increasing output row.
  parallel_for(NumBlocks(C, kChannelBlock), n_out * kChannelBlock * 2,
               [&](int64_t begin, int64_t end) {
                 const int64_t c_lo = begin * kChannelBlock;
                 const int64_t c_hi = std::min(C, end * kChannelBlock);
                 for (int64_t o = 0; o < n_out; ++o) {
                   const T* g = grad_out + o * C;
                   const int32_t* arg = argmax + o * C;
                   for (int64_t c = c_lo; c < c_hi; ++c) {
                     if (arg[c] >= 0) grad_in[int64_t{arg[c]} * C + c] += g[c];
                   }
                 }
               });
}

#define SPARSE_OPS_INSTANTIATE(T)                                            \
  template void SparseMaxPool<T>(const T*, int64_t, const KernelMapView&,    \
                                 int64_t, T*, int32_t*, const ParallelFor&); \
  template void SparseMaxPoolGrad<T>(const T*, const int32_t*, int64_t,      \
                                     int64_t, int64_t, T*,                   \
                                     const ParallelFor&);
SPARSE_OPS_INSTANTIATE(float)
SPARSE_OPS_INSTANTIATE(double)
#undef SPARSE_OPS_INSTANTIATE

}  // namespace sparse_ops
