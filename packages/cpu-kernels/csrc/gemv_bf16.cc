// Skinny matmul with a half-precision weight: y[m, n] (=|+=) x[m, k] · op(W), x f32, W bf16 or f16 bits,
// m ≤ kGemvHalfMaxM (batch-1 decode: the bf16 lm_head, a bf16/f16 dense projection). The weight is read
// straight from its 16-bit storage and widened in registers; nothing is packed or widened whole, so each
// call streams the weight's bytes once (the GEMM path widens every B panel into an f32 buffer first).
//   transB (W stored [n, k], nn.Linear's layout): y[i, j] = dot(x[i, :], W[j, :]), one row of W at a time.
//   !transB (W stored [k, n]):                     y[i, j0:j1] = Σ_p x[i, p] · W[p, j0:j1], column tiles.
// Threads take chunks of output columns (rows of W) from a shared counter; every output element is summed by
// one thread in an order fixed by the shape, so results are bit-identical for any thread count.
// Paths: AVX2/FMA (+F16C for f16) and portable scalar C++, chosen like the GEMM ("scalar" when forced by
// gemmIsa, else AVX2 when the CPU has it). Reference: packages/cpu-kernels/src/gemv-half.ts `referenceGemvHalf`
// (and the reference backend's matmul); tests: test/gemv_half.test.ts.
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

#include "elementwise_dtype.h"
#include "gemm_kernels.h"
#include "gemm_napi.h"
#include "isa.h"
#include "pool.h"
#include "registry.h"

namespace qlora {
namespace {

constexpr int64_t kGemvHalfMaxM = 4;

struct HalfGemv {
  const float* x;     // [m, k]
  const uint16_t* w;  // [n, k] (trans) or [k, n]
  float* y;           // [m, n]
  int64_t m, k, n;
  bool trans, f16, accumulate;
};

inline float widen_scalar(uint16_t h, bool f16) { return f16 ? f16_to_f32(h) : bf16_to_f32(h); }

inline void store(const HalfGemv& g, int64_t i, int64_t j, float v) {
  float& dst = g.y[i * g.n + j];
  dst = g.accumulate ? dst + v : v;
}

// ---- scalar: 8 partial sums per dot product (the same association the vector path uses per lane) ----
template <int M>
void rows_scalar(const HalfGemv& g, int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; ++j) {
    const uint16_t* row = g.w + j * g.k;
    float acc[M][8] = {};
    int64_t p = 0;
    for (; p + 8 <= g.k; p += 8)
      for (int l = 0; l < 8; ++l) {
        const float wv = widen_scalar(row[p + l], g.f16);
        for (int i = 0; i < M; ++i) acc[i][l] += g.x[i * g.k + p + l] * wv;
      }
    for (int i = 0; i < M; ++i) {
      float s = 0;
      for (int l = 0; l < 8; ++l) s += acc[i][l];
      for (int64_t q = p; q < g.k; ++q) s += g.x[i * g.k + q] * widen_scalar(row[q], g.f16);
      store(g, i, j, s);
    }
  }
}

template <int M>
void cols_scalar(const HalfGemv& g, int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; ++j) {
    float acc[M] = {};
    for (int64_t p = 0; p < g.k; ++p) {
      const float wv = widen_scalar(g.w[p * g.n + j], g.f16);
      for (int i = 0; i < M; ++i) acc[i] += g.x[i * g.k + p] * wv;
    }
    for (int i = 0; i < M; ++i) store(g, i, j, acc[i]);
  }
}

#if defined(__x86_64__)
// 8 half values → 8 floats. bf16 is the high half of an f32; f16 goes through F16C's vcvtph2ps (exact,
// subnormals included).
template <bool F16>
__attribute__((target("avx2,fma,f16c"))) inline __m256 load8(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if constexpr (F16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

__attribute__((target("avx2,fma"))) inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// transB: one W row at a time, 16 weights per step into two accumulators per x row (two FMA chains), the
// k % 8 tail scalar after the horizontal sum.
template <int M, bool F16>
__attribute__((target("avx2,fma,f16c"))) void rows_avx2(const HalfGemv& g, int64_t j0, int64_t j1) {
  const int64_t k = g.k, k16 = k / 16 * 16, k8 = k / 8 * 8;
  for (int64_t j = j0; j < j1; ++j) {
    const uint16_t* row = g.w + j * k;
    _mm_prefetch(reinterpret_cast<const char*>(row + 2 * k), _MM_HINT_T0);
    __m256 a0[M], a1[M];
    for (int i = 0; i < M; ++i) a0[i] = a1[i] = _mm256_setzero_ps();
    int64_t p = 0;
    for (; p < k16; p += 16) {
      const __m256 w0 = load8<F16>(row + p), w1 = load8<F16>(row + p + 8);
      for (int i = 0; i < M; ++i) {
        a0[i] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(g.x + i * k + p), a0[i]);
        a1[i] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(g.x + i * k + p + 8), a1[i]);
      }
    }
    if (p < k8) {
      const __m256 w0 = load8<F16>(row + p);
      for (int i = 0; i < M; ++i) a0[i] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(g.x + i * k + p), a0[i]);
      p += 8;
    }
    for (int i = 0; i < M; ++i) {
      float s = hsum8(_mm256_add_ps(a0[i], a1[i]));
      for (int64_t q = p; q < k; ++q) s += g.x[i * k + q] * widen_scalar(row[q], F16);
      store(g, i, j, s);
    }
  }
}

// !transB: column tiles of 8·NV floats kept in registers while p runs over k (one W row segment per p);
// columns past the last full group of 8 are summed by cols_scalar.
template <int M, bool F16>
__attribute__((target("avx2,fma,f16c"))) void cols_avx2(const HalfGemv& g, int64_t j0, int64_t j1) {
  constexpr int NV = M == 1 ? 8 : M == 2 ? 4 : 2;
  const int64_t n = g.n, k = g.k;
  int64_t j = j0;
  for (; j + 8 * NV <= j1; j += 8 * NV) {
    __m256 acc[M][NV];
    for (int i = 0; i < M; ++i)
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_setzero_ps();
    for (int64_t p = 0; p < k; ++p) {
      const uint16_t* wp = g.w + p * n + j;
      __m256 w[NV];
      for (int v = 0; v < NV; ++v) w[v] = load8<F16>(wp + 8 * v);
      for (int i = 0; i < M; ++i) {
        const __m256 xi = _mm256_set1_ps(g.x[i * k + p]);
        for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_fmadd_ps(w[v], xi, acc[i][v]);
      }
    }
    for (int i = 0; i < M; ++i)
      for (int v = 0; v < NV; ++v) {
        alignas(32) float t[8];
        _mm256_store_ps(t, acc[i][v]);
        for (int l = 0; l < 8; ++l) store(g, i, j + 8 * v + l, t[l]);
      }
  }
  for (; j + 8 <= j1; j += 8) {
    __m256 acc[M];
    for (int i = 0; i < M; ++i) acc[i] = _mm256_setzero_ps();
    for (int64_t p = 0; p < k; ++p) {
      const __m256 w = load8<F16>(g.w + p * n + j);
      for (int i = 0; i < M; ++i) acc[i] = _mm256_fmadd_ps(w, _mm256_set1_ps(g.x[i * k + p]), acc[i]);
    }
    for (int i = 0; i < M; ++i) {
      alignas(32) float t[8];
      _mm256_store_ps(t, acc[i]);
      for (int l = 0; l < 8; ++l) store(g, i, j + l, t[l]);
    }
  }
  if (j < j1) cols_scalar<M>(g, j, j1);
}
#endif

using Span = void (*)(const HalfGemv&, int64_t, int64_t);

template <int M>
Span pick(bool avx2, bool trans, bool f16) {
#if defined(__x86_64__)
  if (avx2) {
    if (trans) return f16 ? rows_avx2<M, true> : rows_avx2<M, false>;
    return f16 ? cols_avx2<M, true> : cols_avx2<M, false>;
  }
#else
  (void)avx2, (void)f16;
#endif
  return trans ? rows_scalar<M> : cols_scalar<M>;
}

Span pick_m(int64_t m, bool avx2, bool trans, bool f16) {
  switch (m) {
    case 1: return pick<1>(avx2, trans, f16);
    case 2: return pick<2>(avx2, trans, f16);
    case 3: return pick<3>(avx2, trans, f16);
    default: return pick<4>(avx2, trans, f16);
  }
}

// Which path runs: the GEMM's forced "scalar" wins; otherwise AVX2 where the CPU has AVX2+FMA+F16C.
bool use_avx2() {
#if defined(__x86_64__)
  static const bool f16c = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("f16c");
  }();
  return std::string_view(gemm_kernel().name) != "scalar" && isa().avx2_fma && f16c;
#else
  return false;
#endif
}

// Runs the product; returns the path's name ("avx2" | "scalar").
const char* gemv_half(const HalfGemv& g) {
  const bool avx2 = use_avx2();
  if (g.m == 0 || g.n == 0) return avx2 ? "avx2" : "scalar";
  if (g.k == 0) {
    for (int64_t i = 0; i < g.m * g.n; ++i) g.y[i] = g.accumulate ? g.y[i] : 0.0f;
    return avx2 ? "avx2" : "scalar";
  }
  const Span span = pick_m(g.m, avx2, g.trans, g.f16);
  // Chunks of ≥ 32 K weights (64 KiB of bf16) so one atomic per chunk is noise; a multiple of 64 columns so
  // the column-tile path keeps its full tiles. A small product runs on the calling thread alone.
  const int64_t per_chunk = std::max<int64_t>(64, (32768 / g.k + 63) / 64 * 64);
  const int64_t chunks = (g.n + per_chunk - 1) / per_chunk;
  if (chunks == 1) {
    span(g, 0, g.n);
    return avx2 ? "avx2" : "scalar";
  }
  std::atomic<int64_t> next{0};
  parallel_for(
      static_cast<std::size_t>(std::min<int64_t>(num_threads(), chunks)),
      [&](std::size_t, std::size_t) {
        for (int64_t c; (c = next.fetch_add(1)) < chunks;)
          span(g, c * per_chunk, std::min(g.n, (c + 1) * per_chunk));
      },
      1);
  return avx2 ? "avx2" : "scalar";
}

// gemvHalf(x: Float32Array, w: Uint16Array, out: Float32Array, m, k, n, transB, isF16, accumulate) → path name.
Napi::Value GemvHalf(const Napi::CallbackInfo& info) {
  using namespace gemm_args;
  auto env = info.Env();
  if (info.Length() < 9) {
    fail_type(env, "gemvHalf: expected 9 arguments (x, w, out, m, k, n, transB, isF16, accumulate)");
    return env.Undefined();
  }
  HalfGemv g{};
  int64_t mk = 0, kn = 0, mn = 0;
  if (!get_size(env, info[3], "gemvHalf: m", g.m) || !get_size(env, info[4], "gemvHalf: k", g.k) ||
      !get_size(env, info[5], "gemvHalf: n", g.n))
    return env.Undefined();
  if (g.m < 1 || g.m > kGemvHalfMaxM) {
    fail_range(env, "gemvHalf: m must be 1.." + std::to_string(kGemvHalfMaxM) + ", got " + std::to_string(g.m));
    return env.Undefined();
  }
  if (!checked_mul(env, g.m, g.k, "gemvHalf: x", mk) || !checked_mul(env, g.k, g.n, "gemvHalf: w", kn) ||
      !checked_mul(env, g.m, g.n, "gemvHalf: out", mn))
    return env.Undefined();
  float* x = nullptr;
  uint16_t* w = nullptr;
  float* y = nullptr;
  if (!get_array(env, info[0], "gemvHalf: x", mk, x) || !get_array(env, info[1], "gemvHalf: w", kn, w) ||
      !get_array(env, info[2], "gemvHalf: out", mn, y))
    return env.Undefined();
  if (!get_bool(env, info[6], "gemvHalf: transB", g.trans) || !get_bool(env, info[7], "gemvHalf: isF16", g.f16) ||
      !get_bool(env, info[8], "gemvHalf: accumulate", g.accumulate))
    return env.Undefined();
  g.x = x, g.w = w, g.y = y;
  return Napi::String::New(env, gemv_half(g));
}

Register reg_gemv_half("gemvHalf", GemvHalf);

}  // namespace
}  // namespace qlora
