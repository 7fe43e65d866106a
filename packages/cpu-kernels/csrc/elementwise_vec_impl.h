// Bodies of the VecOps table, written against vec_math.h's V; included by one TU per ISA.
#pragma once
#include "elementwise_vec.h"
#include "vec_math.h"

namespace qlora {
namespace QLORA_NS {
namespace {

float row_max(const float* x, size_t n) {
  size_t i = 0;
  float m = -__builtin_inff();
  if (n >= static_cast<size_t>(V::W)) {
    V::R acc = V::load(x);
    for (i = V::W; i + V::W <= n; i += V::W) acc = V::max(acc, V::load(x + i));
    m = V::hmax(acc);
  }
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

float exp_sum(const float* x, float* y, size_t n, float shift) {
  V::R acc = V::zero(), s = V::set1(shift);
  size_t i = 0;
  for (; i + V::W <= n; i += V::W) {
    V::R e = vexp(V::sub(V::load(x + i), s));
    if (y) V::store(y + i, e);
    acc = V::add(acc, e);
  }
  float total = V::hsum(acc);
  for (; i < n; ++i) {
    float e = sexp(x[i] - shift);
    if (y) y[i] = e;
    total += e;
  }
  return total;
}

QLORA_INLINE V::R vsigmoid(V::R g) {
  const V::R one = V::set1(1.0f);
  return V::div(one, V::add(one, vexp(V::sub(V::zero(), g))));
}
QLORA_INLINE float ssigmoid(float g) { return 1.0f / (1.0f + sexp(-g)); }

void swiglu(const float* g, const float* u, float* y, size_t n) {
  size_t i = 0;
  for (; i + V::W <= n; i += V::W) {
    V::R gv = V::load(g + i);
    V::store(y + i, V::mul(V::mul(gv, vsigmoid(gv)), V::load(u + i)));
  }
  for (; i < n; ++i) y[i] = g[i] * ssigmoid(g[i]) * u[i];
}

void swiglu_bwd(const float* dy, const float* g, const float* u, float* dg, float* du, size_t n) {
  const V::R one = V::set1(1.0f);
  size_t i = 0;
  for (; i + V::W <= n; i += V::W) {
    V::R gv = V::load(g + i), d = V::load(dy + i), s = vsigmoid(gv);
    V::R silu = V::mul(gv, s);
    V::store(du + i, V::mul(d, silu));
    V::R dsilu = V::mul(s, V::fma(gv, V::sub(one, s), one));
    V::store(dg + i, V::mul(V::mul(d, V::load(u + i)), dsilu));
  }
  for (; i < n; ++i) {
    float s = ssigmoid(g[i]);
    du[i] = dy[i] * g[i] * s;
    dg[i] = dy[i] * u[i] * (s * (1.0f + g[i] * (1.0f - s)));
  }
}

}  // namespace

extern const VecOps kVecOps = {row_max, exp_sum, swiglu, swiglu_bwd};

}  // namespace QLORA_NS
}  // namespace qlora
