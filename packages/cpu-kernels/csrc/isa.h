// Runtime ISA detection. Kernels compile AVX2/AVX-512 variants with __attribute__((target(...)))
// and pick one per call through these flags; the baseline build is x86-64-v2. On arm64 every flag is
// false: NEON is part of the armv8-a baseline, so the 128-bit level ("sse" namespaces, level 0) and the
// NEON GEMM micro-kernel are compiled for it unconditionally.
#pragma once

namespace qlora {

struct Isa {
  bool avx2_fma;
  bool avx512f;
  bool avx512bf16;
};

inline const Isa& isa() {
  static const Isa detected = [] {
    Isa i{};
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    i.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    i.avx512f = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    i.avx512bf16 = i.avx512f && __builtin_cpu_supports("avx512bf16");
#endif
    return i;
  }();
  return detected;
}

}  // namespace qlora
