// Row primitives with an exp in them (softmax, cross-entropy, swiglu), compiled for three ISAs
// (elementwise_vec_{avx512,avx2,sse}.cc) and picked once at run time from isa.h.
#pragma once
#include <cstddef>

namespace qlora {

struct VecOps {
  float (*max)(const float* x, size_t n);
  // y[i] = exp(x[i] − shift) (y may be null); returns Σ exp(x[i] − shift).
  float (*exp_sum)(const float* x, float* y, size_t n, float shift);
  // y[i] = silu(g[i]) · u[i]
  void (*swiglu)(const float* g, const float* u, float* y, size_t n);
  // dg = dy · u · σ(g)(1 + g(1 − σ(g))), du = dy · silu(g)
  void (*swiglu_bwd)(const float* dy, const float* g, const float* u, float* dg, float* du, size_t n);
};

namespace avx512 { extern const VecOps kVecOps; }
namespace avx2 { extern const VecOps kVecOps; }
namespace sse { extern const VecOps kVecOps; }

// The ISA level the fused kernels use: 2 = AVX-512, 1 = AVX2+FMA, 0 = SSE4.2 baseline. It is the
// detected level unless lowered with the JS function setFusedIsaLevel(n) (tests run every variant).
int fused_isa_level();
const VecOps& vecops();

}  // namespace qlora
