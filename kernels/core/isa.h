// Which vector instruction set the float kernels use, chosen at run time.
//
// The library is compiled for a baseline (setup.py / configure.sh); kernels
// for wider vectors are compiled with per-function target attributes and
// picked here from what the CPU reports. SPARSE_OPS_ISA=avx2 (or portable)
// narrows the choice, for tests that compare the paths and for benchmarks;
// it never widens it past the CPU. Each path is deterministic on its own,
// and the paths' products are FMA chains in the same order, so they agree
// bit for bit where both exist.
#ifndef SPARSE_OPS_KERNELS_CORE_ISA_H_
#define SPARSE_OPS_KERNELS_CORE_ISA_H_

#include <cstdlib>
#include <cstring>

namespace sparse_ops {

enum class Isa { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

// The widest path this CPU runs (cpuid, once per process).
inline Isa CpuIsa() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const Isa isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw")) {
      return Isa::kAvx512;
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

// The path the kernels take now: the CPU's, narrowed by SPARSE_OPS_ISA
// ("avx512", "avx2" or "portable"; read on each call, so a test can switch
// paths in one process).
inline Isa ActiveIsa() {
  const Isa cpu = CpuIsa();
  const char* want = std::getenv("SPARSE_OPS_ISA");
  if (want == nullptr || *want == '\0') return cpu;
  Isa wanted = cpu;
  if (std::strcmp(want, "portable") == 0) wanted = Isa::kPortable;
  if (std::strcmp(want, "avx2") == 0) wanted = Isa::kAvx2;
  return static_cast<int>(wanted) < static_cast<int>(cpu) ? wanted : cpu;
}

}  // namespace sparse_ops

// Functions compiled for AVX2 + FMA or AVX-512 inside a file built for a
// narrower baseline; called only when ActiveIsa() is at least that path.
// Only functions of this library carry them: library templates (std, Eigen)
// instantiated inside stay compiled for the baseline, so no wider copy of
// them can be picked by the linker for baseline callers.
#define SPARSE_OPS_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define SPARSE_OPS_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")))

#endif  // SPARSE_OPS_KERNELS_CORE_ISA_H_
