// Which vector instruction set the float kernels use, chosen at run time.
//
// The library is compiled for a baseline (setup.py / configure.sh); kernels
// for wider vectors are compiled with per-function target attributes and
// picked here from what the CPU reports. SPARSE_OPS_ISA picks another path
// the CPU has, for tests that compare the paths and for benchmarks; it
// never goes past the CPU. Each path is deterministic on its own, and the
// float paths' products are FMA chains in the same order, so they agree bit
// for bit where both exist (the bfloat16 dot products sum in another order).
#ifndef SPARSE_OPS_KERNELS_CORE_ISA_H_
#define SPARSE_OPS_KERNELS_CORE_ISA_H_

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "kernels/core/parallel.h"

namespace sparse_ops {

// Ordered: each path has what the ones before it have. kAvx512Bf16 adds
// the bfloat16 dot products (avx512_bf16) to AVX-512.
enum class Isa { kPortable = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3 };

// The widest path this CPU runs (cpuid, once per process).
inline Isa CpuIsa() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const Isa isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bw")) {
      return __builtin_cpu_supports("avx512bf16") ? Isa::kAvx512Bf16
                                                  : Isa::kAvx512;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      return Isa::kAvx2;
    }
    return Isa::kPortable;
  }();
  return isa;
#else
  return Isa::kPortable;
#endif
}

// The path taken by default: the CPU's widest, except that the bfloat16
// dot products (vdpbf16ps) are used only where they outrun float FMAs. On
// Intel's cores they are split into several uops: on this project's Xeon
// (Sapphire Rapids class) they ran at half the FLOP rate of float FMAs, so
// bfloat16 rows are widened to float there. AMD's Zen 4 and 5 issue them
// like an FMA (twice its FLOPs; from AMD's optimisation guide, not measured
// here).
inline Isa DefaultIsa() {
  const Isa cpu = CpuIsa();
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu == Isa::kAvx512Bf16 && !__builtin_cpu_is("amd")) return Isa::kAvx512;
#endif
  return cpu;
}

// The path the kernels take now: DefaultIsa(), or what SPARSE_OPS_ISA
// names ("avx512bf16", "avx512", "avx2" or "portable") where the CPU has it
// (read on each call, so a test can switch paths in one process).
inline Isa ActiveIsa() {
  const Isa cpu = CpuIsa();
  const char* want = std::getenv("SPARSE_OPS_ISA");
  if (want == nullptr || *want == '\0') return DefaultIsa();
  Isa wanted = DefaultIsa();
  if (std::strcmp(want, "portable") == 0) wanted = Isa::kPortable;
  if (std::strcmp(want, "avx512") == 0) wanted = Isa::kAvx512;
  if (std::strcmp(want, "avx512bf16") == 0) wanted = Isa::kAvx512Bf16;
  if (std::strcmp(want, "avx2") == 0) wanted = Isa::kAvx2;
  return static_cast<int>(wanted) < static_cast<int>(cpu) ? wanted : cpu;
}

}  // namespace sparse_ops

// Functions compiled for AVX2 + FMA or AVX-512 inside a file built for a
// narrower baseline; called only when ActiveIsa() is at least that path.
// Only functions of this library carry them: library templates (std, Eigen)
// instantiated inside stay compiled for the baseline, so no wider copy of
// them can be picked by the linker for baseline callers.
// The AVX2 path is x86-64-v3: AVX2 and FMA with the bit instructions
// (popcnt, bmi, lzcnt) that come with them.
#define SPARSE_OPS_TARGET_AVX2 \
  __attribute__((target("avx2,fma,popcnt,bmi,bmi2,lzcnt,f16c,movbe")))
#define SPARSE_OPS_TARGET_AVX512                                         \
  __attribute__((target(                                                 \
      "avx512f,avx512vl,avx512dq,avx512bw,avx512cd,avx2,fma,popcnt,bmi," \
      "bmi2,lzcnt,f16c,movbe")))
#define SPARSE_OPS_TARGET_AVX512_BF16                                    \
  __attribute__((target(                                                 \
      "avx512bf16,avx512f,avx512vl,avx512dq,avx512bw,avx512cd,avx2,fma," \
      "popcnt,bmi,bmi2,lzcnt,f16c,movbe")))

namespace sparse_ops {
namespace isa_internal {

// One copy of body() per path: `flatten` inlines body and all it calls into
// each copy, which is compiled for that path's target, so the loops inside
// are vectorized (and popcounts are instructions) for it.
template <typename Body>
SPARSE_OPS_TARGET_AVX512
__attribute__((flatten)) void RunAvx512(const Body& body) {
  body();
}
template <typename Body>
SPARSE_OPS_TARGET_AVX2
__attribute__((flatten)) void RunAvx2(const Body& body) {
  body();
}
template <typename Body>
__attribute__((flatten)) void RunBaseline(const Body& body) {
  body();
}

}  // namespace isa_internal

// Runs body() compiled for `isa` (ActiveIsa(), read once by the caller):
// for the kernels written as plain loops, whose results do not depend on
// the vector width (element-wise work, or sums per element in a fixed
// order), so every path gives the same bits.
template <typename Body>
void RunVectorized(Isa isa, const Body& body) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (isa >= Isa::kAvx512) return isa_internal::RunAvx512(body);
  if (isa >= Isa::kAvx2) return isa_internal::RunAvx2(body);
#endif
  isa_internal::RunBaseline(body);
}

// parallel_for(n, cost, fn) with each range's fn compiled for the active
// path (RunVectorized).
template <typename Fn>
void VectorizedFor(const ParallelFor& parallel_for, int64_t n,
                   int64_t cost_per_unit, const Fn& fn) {
  const Isa isa = ActiveIsa();
  parallel_for(n, cost_per_unit, [&](int64_t begin, int64_t end) {
    RunVectorized(isa, [&] { fn(begin, end); });
  });
}

}  // namespace sparse_ops

#endif  // SPARSE_OPS_KERNELS_CORE_ISA_H_
