// The small harness of the C++ and CUDA test programs (no TensorFlow, no
// test framework; g++ and nvcc): counted expectations that name their
// file:line, near-equality, fatal Status checks, and the exit status of
// main. Test programs only: kernels/core/*_test.cc and
// kernels/cuda/*_test.cu.cc (whose CUDA helpers are in
// kernels/cuda/gpu_test_harness.h).
//
//   EXPECT(a == b);                        // counted; prints file:line
//   EXPECT_MSG(a == b, "case " + name);    // the same, with a message
//   EXPECT_NEAR(got, want, 1e-5);          // |got - want| <= tol (1 + |want|)
//   EXPECT_OK(status);                     // a core Status, counted
//   ASSERT_OK(status);                     // a core Status, fatal (exit 2)
//   return sparse_ops::testing::TestResult("core_test");   // end of main
//
// Failures go to stderr (stdout is flushed first, so that they stay in
// order with a test's progress lines); the first kMaxShownFailures are
// shown. TestResult prints "RESULT: <name>: ..." and returns 0 when every
// check passed, else 1.
#ifndef SPARSE_OPS_KERNELS_CORE_TEST_HARNESS_H_
#define SPARSE_OPS_KERNELS_CORE_TEST_HARNESS_H_

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/core/status.h"

namespace sparse_ops {
namespace testing {

constexpr int kMaxShownFailures = 30;

struct Counters {
  int checks = 0;
  int failures = 0;
};

inline Counters& GetCounters() {
  static Counters counters;
  return counters;
}

// Records a failed check at file:line.
inline void Fail(const char* file, int line, const std::string& what) {
  Counters& c = GetCounters();
  ++c.failures;
  if (c.failures > kMaxShownFailures) return;
  std::fflush(stdout);
  std::fprintf(stderr, "%s:%d: FAILED: %s\n", file, line, what.c_str());
  if (c.failures == kMaxShownFailures) {
    std::fprintf(stderr, "(further failures not shown)\n");
  }
}

// Counts a check; records a failure when !ok. Returns ok.
inline bool Check(bool ok, const char* file, int line,
                  const std::string& what) {
  ++GetCounters().checks;
  if (!ok) Fail(file, line, what);
  return ok;
}

// Stops the program: a failure that later checks cannot survive.
[[noreturn]]
inline void Fatal(const char* file, int line, const std::string& what) {
  std::fflush(stdout);
  std::fprintf(stderr, "%s:%d: FATAL: %s\n", file, line, what.c_str());
  std::exit(2);
}

// |got - want| <= tol * (1 + |want|): relative for large values, absolute
// near zero. False when either is NaN.
inline bool Near(double got, double want, double tol) {
  return std::fabs(got - want) <= tol * (1 + std::fabs(want));
}

// Near() element by element; on a mismatch *where says which element (or
// the sizes) differ.
template <typename T, typename U>
bool AllNear(const std::vector<T>& got, const std::vector<U>& want, double tol,
             std::string* where) {
  if (got.size() != want.size()) {
    *where = "size " + std::to_string(got.size()) + " vs " +
             std::to_string(want.size());
    return false;
  }
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = static_cast<double>(got[i]);
    const double w = static_cast<double>(want[i]);
    if (!Near(g, w, tol)) {
      *where = "element " + std::to_string(i) + ": " + std::to_string(g) +
               " vs " + std::to_string(w);
      return false;
    }
  }
  return true;
}

// The same bytes (NaN payloads and signed zeros included).
template <typename T>
bool BitwiseEqual(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() &&
         (a.empty() ||
          std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

inline bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// Prints the totals; the exit status of main.
inline int TestResult(const char* name) {
  const Counters& c = GetCounters();
  std::fflush(stdout);
  if (c.failures > 0) {
    std::fprintf(stderr, "RESULT: %s: %d of %d checks FAILED\n", name,
                 c.failures, c.checks);
    return 1;
  }
  std::fprintf(stderr, "RESULT: %s: all %d checks passed\n", name, c.checks);
  return 0;
}

}  // namespace testing
}  // namespace sparse_ops

#define EXPECT(cond)                                                        \
  ::sparse_ops::testing::Check(static_cast<bool>(cond), __FILE__, __LINE__, \
                               #cond)

#define EXPECT_MSG(cond, msg)                                               \
  ::sparse_ops::testing::Check(static_cast<bool>(cond), __FILE__, __LINE__, \
                               std::string(#cond) + ": " + (msg))

#define EXPECT_NEAR(got, want, tol)                                          \
  do {                                                                       \
    const double got_ = static_cast<double>(got);                            \
    const double want_ = static_cast<double>(want);                          \
    ::sparse_ops::testing::Check(                                            \
        ::sparse_ops::testing::Near(got_, want_, (tol)), __FILE__, __LINE__, \
        std::string(#got " near " #want ": ") + std::to_string(got_) +       \
            " vs " + std::to_string(want_));                                 \
  } while (0)

#define EXPECT_OK(expr)                                 \
  do {                                                  \
    const ::sparse_ops::Status status_ = (expr);        \
    ::sparse_ops::testing::Check(                       \
        status_.ok(), __FILE__, __LINE__,               \
        std::string(#expr) + ": " + status_.message()); \
  } while (0)

#define ASSERT_OK(expr)                                                       \
  do {                                                                        \
    const ::sparse_ops::Status status_ = (expr);                              \
    if (!status_.ok()) {                                                      \
      ::sparse_ops::testing::Fatal(                                           \
          __FILE__, __LINE__, std::string(#expr) + ": " + status_.message()); \
    }                                                                         \
  } while (0)

#endif  // SPARSE_OPS_KERNELS_CORE_TEST_HARNESS_H_
