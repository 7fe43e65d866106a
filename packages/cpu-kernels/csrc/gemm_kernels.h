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
  // k values per packed 32-bit word: 1 = f32 panels; 2 = bf16 k-pairs (gemm_bf16.cc), where a
  // kc block occupies ceil(kc/2) words per row/column and `a`/`b` point at those words.
  int kpair = 1;
};

// Words per row/column of a packed kc block.
inline int64_t packed_k(const GemmKernel& K, int64_t kc) { return (kc + K.kpair - 1) / K.kpair; }

// The best kernel for this CPU (AVX-512 > AVX2/FMA > portable, except that Zen 4 runs the AVX2 tile
// unless "avx512" is asked for by name), chosen once at run time.
// $QLORA_GEMM_ISA = "avx512bf16" | "avx512" | "avx2" | "scalar" caps the choice (used by tests to cover every path).
const GemmKernel& gemm_kernel();
const GemmKernel& gemm_kernel_for(const char* isa);  // nullptr/"" = best; falls back to what the CPU has
void set_gemm_kernel(const char* isa);                // tests: force a path (not thread-safe vs running GEMMs)
// The name of the widest f32 kernel the request in force allows on this CPU ("avx512", "avx2", "neon",
// "scalar"). The 4-bit GEMV follows it rather than gemm_kernel(): its AVX-512 decode (one vpermps per
// 16 weights) is faster than the AVX2 one on every AVX-512 CPU, Zen 4 included.
const char* gemm_isa_cap();

// The AVX512-BF16 k-pair kernel for bf16 x bf16 products, or nullptr when the CPU lacks
// AVX512_BF16 or a forced ISA ("avx512", "avx2", "scalar") rules it out; the caller then widens
// bf16 to f32 while packing and runs gemm_kernel(). "avx512bf16" or "" allow it.
const GemmKernel* gemm_bf16_kernel();
const GemmKernel& avx512bf16_kernel();  // defined in gemm_bf16.cc; only valid with isa().avx512bf16

// Names of every f32 micro-kernel compiled into this binary (whether or not this CPU can run it),
// null-terminated. The tests' ISA accounting checks that each one either ran or was reported skipped.
const char* const* gemm_kernel_names();

}  // namespace qlora
