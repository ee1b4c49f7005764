// Framework-free test of the attention core (no TensorFlow, no gtest):
// AttentionKeep and KeptRows against a brute force that sorts every
// (batch item, channel) by (key descending, row ascending), on tie-heavy,
// random, NaN, signed-zero and huge-batch-index inputs, serial and on 3
// threads. Exits nonzero on any failure. Run: bazel test
// //kernels:attention_test
#include "kernels/core/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernels/core/parallel.h"
#include "kernels/core/test_harness.h"

namespace sparse_ops {
namespace {

// [0, n) in chunks of 7 units dealt round-robin to `threads` threads.
void ThreeThreads(int64_t n, int64_t /*cost*/,
                  const std::function<void(int64_t, int64_t)>& fn) {
  const int64_t chunk = 7;
  std::vector<std::thread> pool;
  for (int t = 0; t < 3; ++t) {
    pool.emplace_back([&, t] {
      for (int64_t b = t * chunk; b < n; b += 3 * chunk)
        fn(b, std::min(n, b + chunk));
    });
  }
  for (auto& th : pool) th.join();
}

template <typename T>
double RankKey(T v, AttentionMode mode) {
  if (std::isnan(v)) return -std::numeric_limits<double>::infinity();
  return mode == AttentionMode::kAbs ? std::fabs(double(v)) : double(v);
}

// keep[i * C + c] by sorting; coords [n, 2] (batch, x).
template <typename T>
std::vector<bool> BruteKeep(const std::vector<T>& f,
                            const std::vector<int32_t>& coords, int64_t n,
                            int64_t C, int64_t k, AttentionMode mode,
                            AttentionPer per) {
  std::vector<bool> keep(n * C, false);
  std::vector<int32_t> batches;
  for (int64_t i = 0; i < n; ++i) batches.push_back(coords[2 * i]);
  std::sort(batches.begin(), batches.end());
  batches.erase(std::unique(batches.begin(), batches.end()), batches.end());
  for (int32_t b : batches) {
    std::vector<int64_t> rows;
    for (int64_t i = 0; i < n; ++i)
      if (coords[2 * i] == b) rows.push_back(i);
    const int64_t lanes = per == AttentionPer::kSite ? 1 : C;
    for (int64_t c = 0; c < lanes && C > 0; ++c) {
      std::vector<std::pair<double, int64_t>> order;  // (-key, row): ascending
      for (int64_t i : rows) {
        double key = 0;
        if (per == AttentionPer::kSite) {
          T norm2 = 0;
          for (int64_t d = 0; d < C; ++d) norm2 += f[i * C + d] * f[i * C + d];
          key = RankKey(norm2, AttentionMode::kValue);
        } else {
          key = RankKey(f[i * C + c], mode);
        }
        order.push_back({-key, i});
      }
      std::sort(order.begin(), order.end());
      for (int64_t j = 0; j < std::min<int64_t>(k, order.size()); ++j) {
        const int64_t i = order[j].second;
        if (per == AttentionPer::kSite) {
          for (int64_t d = 0; d < C; ++d) keep[i * C + d] = true;
        } else {
          keep[i * C + c] = true;
        }
      }
    }
  }
  return keep;
}

template <typename T>
void Check(const std::string& name, const std::vector<T>& f,
           const std::vector<int32_t>& coords, int64_t C) {
  const int64_t n = static_cast<int64_t>(coords.size()) / 2;
  const BatchGroups groups = GroupRowsByBatch(coords.data(), n, 2);
  for (int64_t k : {int64_t{0}, int64_t{1}, int64_t{2}, int64_t{5}, int64_t{40},
                    n, n + 1}) {
    for (AttentionMode mode : {AttentionMode::kValue, AttentionMode::kAbs}) {
      for (AttentionPer per : {AttentionPer::kChannel, AttentionPer::kSite}) {
        const std::vector<bool> want = BruteKeep(f, coords, n, C, k, mode, per);
        const std::string what =
            name + " k=" + std::to_string(k) +
            (mode == AttentionMode::kAbs ? " abs" : " value") +
            (per == AttentionPer::kSite ? " site" : " channel");
        for (bool threaded : {false, true}) {
          std::vector<char> keep(n * C + 1, 2);  // 2: never written
          AttentionKeep<T>(
              f.data(), n, C, groups, k, mode, per,
              reinterpret_cast<bool*>(keep.data()),
              threaded ? ParallelFor(ThreeThreads) : ParallelFor(SerialFor));
          bool same = keep[n * C] == 2;
          for (int64_t j = 0; j < n * C; ++j) same &= (keep[j] == 1) == want[j];
          EXPECT_MSG(same, what + (threaded ? " threaded" : " serial"));
          std::vector<int32_t> want_rows;
          for (int64_t i = 0; i < n; ++i) {
            if (std::any_of(want.begin() + i * C, want.begin() + (i + 1) * C,
                            [](bool v) { return v; })) {
              want_rows.push_back(static_cast<int32_t>(i));
            }
          }
          const std::vector<int32_t> rows = KeptRows(
              reinterpret_cast<const bool*>(keep.data()), n, C,
              threaded ? ParallelFor(ThreeThreads) : ParallelFor(SerialFor));
          EXPECT_MSG(rows == want_rows, what + " kept rows");
        }
      }
    }
  }
}

// n sites in `batches` batch items (shuffled rows, batch index b * scale),
// C channels of integers in [-range, range] (ties) or normals.
template <typename T>
void Random(const std::string& name, int64_t n, int64_t C, int batches,
            int32_t scale, int range, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> coords(2 * n);
  for (int64_t i = 0; i < n; ++i) {
    coords[2 * i] = static_cast<int32_t>(rng() % batches) * scale;
    coords[2 * i + 1] = static_cast<int32_t>(i);
  }
  std::vector<T> f(n * C);
  std::normal_distribution<double> normal;
  for (auto& v : f) {
    v = range > 0 ? T(int(rng() % (2 * range + 1)) - range) : T(normal(rng));
  }
  Check(name, f, coords, C);
}

void Special() {
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  // NaN ties -inf; -0 ties +0; all in one batch item, 1 channel.
  std::vector<double> f = {nan, -inf, -0.0, 0.0, -7, nan, inf, -0.0};
  std::vector<int32_t> coords;
  for (int i = 0; i < 8; ++i) coords.insert(coords.end(), {0, i});
  Check("special double", f, coords, 1);
  std::vector<float> g(f.begin(), f.end());
  Check("special float", g, coords, 1);
  // An empty tensor and zero channels.
  Check("empty", std::vector<float>{}, std::vector<int32_t>{}, 3);
  Check("zero channels", std::vector<float>{}, std::vector<int32_t>{0, 0, 1, 1},
        0);
}

}  // namespace
}  // namespace sparse_ops

int main() {
  using sparse_ops::Random;
  Random<float>("ties float", 200, 21, 3, 1, 2, 1);
  Random<double>("ties double", 150, 5, 4, 1, 3, 2);
  Random<float>("random float", 300, 37, 2, 1, 0, 3);
  Random<double>("random double", 300, 17, 3, 1, 0, 4);
  Random<float>("huge batch indices", 120, 4, 3, 1 << 30, 2, 5);  // sorted path
  Random<float>("one site", 1, 3, 1, 7, 2, 6);
  sparse_ops::Special();
  return sparse_ops::testing::TestResult("attention_test");
}
