// Runtime ISA detection. Kernels compile AVX2/AVX-512 variants with __attribute__((target(...)))
// and pick one per call through these flags; the baseline build is x86-64-v2.
#pragma once

namespace qlora {

struct Isa {
  bool avx2_fma;
  bool avx512f;
  bool avx512bf16;
};

inline const Isa& isa() {
  static const Isa detected = [] {
    __builtin_cpu_init();
    Isa i{};
    i.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    i.avx512f = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    i.avx512bf16 = i.avx512f && __builtin_cpu_supports("avx512bf16");
    return i;
  }();
  return detected;
}

}  // namespace qlora
