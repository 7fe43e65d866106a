// Register-blocked GEMM micro-kernels (one per ISA) and the blocking parameters that go with them.
// A micro-kernel computes one full MR x NR tile of C from packed panels:
//   C[MR x NR] (=|+=) Apanel[kc][MR] * Bpanel[kc][NR]
// The driver (gemm_driver.cc) pads edge tiles, so kernels never see partial tiles.
#pragma once
#include <cstdint>

namespace qlora {

using MicroKernel = void (*)(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, bool accumulate);

struct GemmKernel {
  const char* name;
  int mr, nr;          // register tile
  int64_t mc, kc, nc;  // cache blocking: A block mc x kc (L2), B micro-panel kc x nr (L1), B block kc x nc
  MicroKernel fn;
};

// The best kernel for this CPU (AVX-512 > AVX2/FMA > portable), chosen once at run time.
// $QLORA_GEMM_ISA = "avx512" | "avx2" | "scalar" caps the choice (used by tests to cover every path).
const GemmKernel& gemm_kernel();
const GemmKernel& gemm_kernel_for(const char* isa);  // nullptr/"" = best; falls back to what the CPU has
void set_gemm_kernel(const char* isa);                // tests: force a path (not thread-safe vs running GEMMs)

}  // namespace qlora
