// Standalone test of the CUDA k-selection attention (kernels/cuda/
// attention_gpu.h) against the CPU core (kernels/core/attention.h): no
// TensorFlow, needs a GPU. The kept entries and rows must equal the CPU's
// exactly, twice (determinism), for float and double, by value and by
// magnitude, per channel and per site; with ties, NaN, -0.0 and +-inf,
// k = 0, k past a batch item's size, unsorted rows, sparse and huge batch
// indices, empty inputs; and a negative batch index gives the CPU's message.
//
//   nvcc -std=c++17 -O3 -arch=sm_90 --expt-relaxed-constexpr -I. -x cu \
//     kernels/cuda/attention_gpu.cu.cc kernels/cuda/attention_gpu_test.cu.cc \
//     kernels/core/attention.cc -o /tmp/attention_gpu_test
#if !defined(GOOGLE_CUDA) || !GOOGLE_CUDA

#include "kernels/cuda/attention_gpu.h"

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/core/attention.h"
#include "kernels/cuda/gpu_test_harness.h"

namespace {

namespace sg = sparse_ops::gpu;
using sparse_ops::AttentionMode;
using sparse_ops::AttentionPer;
using sparse_ops::Status;

struct Result {
  std::vector<uint8_t> keep;
  std::vector<int32_t> rows;
  bool operator==(const Result& o) const {
    return keep == o.keep && rows == o.rows;
  }
};

struct Case {
  std::string name;
  int64_t n, channels;
  std::vector<int32_t> coords;  // [n, 4]
};

template <typename T>
Result Cpu(const Case& c, const std::vector<T>& features, int64_t k,
           AttentionMode mode, AttentionPer per) {
  const sparse_ops::ParallelFor serial =
      [](int64_t n, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
        if (n > 0) fn(0, n);
      };
  const sparse_ops::BatchGroups groups =
      sparse_ops::GroupRowsByBatch(c.coords.data(), c.n, 4);
  Result r;
  r.keep.assign(c.n * c.channels, 0);
  sparse_ops::AttentionKeep<T>(features.data(), c.n, c.channels, groups, k,
                               mode, per,
                               reinterpret_cast<bool*>(r.keep.data()), serial);
  r.rows = sparse_ops::KeptRows(reinterpret_cast<const bool*>(r.keep.data()),
                                c.n, c.channels, serial);
  return r;
}

template <typename T>
Status Gpu(const Case& c, const std::vector<T>& features, int64_t k,
           AttentionMode mode, AttentionPer per, Result* r, cudaStream_t s) {
  DevBuf<T> d_features(features);
  DevBuf<int32_t> d_coords(c.coords);
  DevBuf<uint8_t> d_keep(c.n * c.channels);
  d_keep.Poison();
  DevBuf<sg::AttentionInfo> info(1);
  DevBuf<unsigned char> ws(
      sg::AttentionWorkspaceBytes<T>(c.n, c.channels, per));
  ASSERT_OK(sg::AttentionKeep<T>(d_features.get(), c.n, c.channels,
                                 d_coords.get(), 4, k, mode, per,
                                 reinterpret_cast<bool*>(d_keep.get()),
                                 info.get(), ws.get(), ws.size(), s));
  CUDA_OK(cudaStreamSynchronize(s));
  const sg::AttentionInfo host = info.Download()[0];
  const Status status = sg::AttentionInfoStatus(host);
  if (!status.ok()) return status;
  DevBuf<int32_t> d_rows(host.num_rows);
  ASSERT_OK(sg::AttentionKeptRows<T>(c.n, c.channels, per, host.num_rows,
                                     d_rows.get(), ws.get(), ws.size(), s));
  CUDA_OK(cudaStreamSynchronize(s));
  r->keep = d_keep.Download();
  r->keep.resize(c.n * c.channels);
  r->rows = d_rows.Download();
  r->rows.resize(host.num_rows);
  return Status::Ok();
}

// Rows in random order with batch indices from `batches`; coordinates are
// irrelevant to attention but filled.
Case RandomCase(std::mt19937_64* rng, const std::string& name, int64_t n,
                int64_t channels, const std::vector<int32_t>& batches) {
  Case c{name, n, channels, {}};
  for (int64_t i = 0; i < n; ++i) {
    c.coords.push_back(batches[(*rng)() % batches.size()]);
    for (int a = 0; a < 3; ++a)
      c.coords.push_back(static_cast<int32_t>((*rng)() % 64) - 32);
  }
  return c;
}

// Values with many ties (a few levels), signed zeros, infinities and NaN.
template <typename T>
std::vector<T> Features(std::mt19937_64* rng, int64_t size, bool ties) {
  std::vector<T> f(size);
  std::normal_distribution<double> normal;
  const T specials[] = {T(0),
                        -T(0),
                        std::numeric_limits<T>::infinity(),
                        -std::numeric_limits<T>::infinity(),
                        std::numeric_limits<T>::quiet_NaN(),
                        T(1),
                        T(-1)};
  for (T& v : f) {
    const uint64_t r = (*rng)() % 100;
    if (r < 8) {
      v = specials[r % 7];
    } else if (ties) {
      v = static_cast<T>(static_cast<int>((*rng)() % 7) - 3);
    } else {
      v = static_cast<T>(normal(*rng));
    }
  }
  return f;
}

template <typename T>
void Compare(const Case& c, int64_t k, bool ties, std::mt19937_64* rng,
             cudaStream_t s) {
  const std::vector<T> f = Features<T>(rng, c.n * c.channels, ties);
  for (const AttentionMode mode :
       {AttentionMode::kValue, AttentionMode::kAbs}) {
    for (const AttentionPer per :
         {AttentionPer::kChannel, AttentionPer::kSite}) {
      const std::string what =
          c.name + (sizeof(T) == 4 ? " float" : " double") +
          (mode == AttentionMode::kAbs ? " abs" : " value") +
          (per == AttentionPer::kSite ? " per site" : " per channel") +
          " k=" + std::to_string(k) + (ties ? " ties" : "");
      const Result want = Cpu<T>(c, f, k, mode, per);
      Result got, again;
      ASSERT_OK(Gpu<T>(c, f, k, mode, per, &got, s));
      ASSERT_OK(Gpu<T>(c, f, k, mode, per, &again, s));
      EXPECT_MSG(got == want, "attention equals the CPU: " + what);
      EXPECT_MSG(again == got, "attention twice: " + what);
    }
  }
}

}  // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  cudaStream_t s;
  CUDA_OK(cudaStreamCreate(&s));
  std::mt19937_64 rng(77);
  std::printf("== sparse_ops GPU attention test ==\n");
  const std::vector<Case> cases = {
      RandomCase(&rng, "3 batch items", 700, 19, {0, 1, 2}),
      RandomCase(&rng, "sparse huge batch indices", 300, 5,
                 {7, 1000000, 2147483647}),
      RandomCase(&rng, "one item, 40 channels", 2500, 40, {0}),
      RandomCase(&rng, "one row", 1, 3, {4}),
      RandomCase(&rng, "no channels", 50, 0, {0, 1}),
      Case{"no rows", 0, 6, {}},
  };
  for (const Case& c : cases) {
    for (const int64_t k :
         {int64_t{0}, int64_t{1}, int64_t{17}, int64_t{5000}}) {
      for (const bool ties : {false, true}) {
        Compare<float>(c, k, ties, &rng, s);
        Compare<double>(c, k, ties, &rng, s);
      }
    }
  }
  // The CPU op's error for a negative batch index (its glue's message).
  Case negative = RandomCase(&rng, "negative", 10, 2, {0, 1});
  negative.coords[6 * 4] = -3;
  negative.coords[8 * 4] = -5;
  Result r;
  const Status status =
      Gpu<float>(negative, std::vector<float>(20, 1.0f), 3,
                 AttentionMode::kValue, AttentionPer::kChannel, &r, s);
  EXPECT_MSG(
      !status.ok() &&
          status.message() == "coordinates row 6 has a negative batch index -3",
      "attention negative batch: " + status.message());
  CUDA_OK(cudaStreamDestroy(s));
  return sparse_ops::testing::TestResult("attention_gpu_test");
}

#endif  // !GOOGLE_CUDA
