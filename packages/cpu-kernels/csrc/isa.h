// Runtime ISA detection. Kernels compile AVX2/AVX-512 variants with __attribute__((target(...)))
// and pick one per call through these flags; the baseline build is x86-64-v2. On arm64 every flag is
// false: NEON is part of the armv8-a baseline, so the 128-bit level ("sse" namespaces, level 0) and the
// NEON GEMM micro-kernel are compiled for it unconditionally.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace qlora {

struct Isa {
  bool avx2_fma;
  bool avx512f;
  bool avx512bf16;
  // AMD family 19h (Zen 4) with AVX-512: each 512-bit op runs as two 256-bit halves, so a 512-bit FMA
  // tile has no FMA throughput over a 256-bit one (see gemm_kernel_for).
  bool avx512_half_rate;
};

#if defined(__x86_64__) || defined(__i386__)
inline bool amd_family_19h() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return false;
  const bool amd = ebx == 0x68747541 && edx == 0x69746e65 && ecx == 0x444d4163;  // "AuthenticAMD"
  if (!amd || !__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  const unsigned base = (eax >> 8) & 0xf, family = base == 0xf ? base + ((eax >> 20) & 0xff) : base;
  return family == 0x19;
}
#endif

inline const Isa& isa() {
  static const Isa detected = [] {
    Isa i{};
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    i.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    i.avx512f = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    i.avx512bf16 = i.avx512f && __builtin_cpu_supports("avx512bf16");
    i.avx512_half_rate = i.avx512f && amd_family_19h();
#endif
    return i;
  }();
  return detected;
}

}  // namespace qlora
