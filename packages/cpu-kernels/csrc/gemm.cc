// Dense matmul: out[b] = op(A[b]) . op(B[b]) for f32 or bf16 inputs (bf16 is widened to f32 while
// packing; accumulation is f32), with transposes and batch strides (0 = broadcast). bf16 x bf16 runs
// on the AVX512-BF16 k-pair kernel instead where the CPU has it (gemm_bf16.cc). An f16 operand (with an
// f32 other operand: activations x an f16 weight) is widened the same way, panel by panel, never whole.
// Reference: packages/tensor reference backend `matmul` (tests: src/gemm.test.ts).
#include <algorithm>
#include <cstring>
#include <type_traits>

#include "elementwise_dtype.h"
#include "gemm_bf16.h"
#include "gemm_driver.h"
#include "gemm_kernels.h"
#include "gemm_napi.h"
#include "gemm_pack.h"
#include "pool.h"
#include "registry.h"

namespace qlora {
namespace {

// f16 bit patterns, a distinct type so the packers widen them as f16 (bf16 arrives as plain uint16_t).
struct F16 {
  uint16_t bits;
};
static_assert(sizeof(F16) == sizeof(uint16_t), "F16 must alias uint16_t storage");

inline float widen(float x) { return x; }
inline float widen(F16 h) { return f16_to_f32(h.bits); }
inline float widen(uint16_t bf16) {
  uint32_t bits = static_cast<uint32_t>(bf16) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// op(A) as a [m x k] matrix: A stored [m, k] (ld = k) or, transposed, [k, m] (ld = m).
template <typename T>
struct DenseA final : APacker {
  const T* data;
  int64_t ld;
  bool trans;
  DenseA(const T* d, int64_t l, bool t) : data(d), ld(l), trans(t) {}

  void pack(int64_t i0, int64_t mc, int64_t p0, int64_t kc, int mr, float* dst) const override {
    for (int64_t s = 0; s < mc; s += mr, dst += mr * kc) {
      const int64_t rows = std::min<int64_t>(mr, mc - s);
      if constexpr (std::is_same_v<T, float>) {
        if (!trans) {
          pack_a_rows_f32(data + (i0 + s) * ld + p0, ld, rows, kc, mr, dst);
          continue;
        }
      }
      if (rows < mr) std::memset(dst, 0, sizeof(float) * mr * kc);
      if (!trans) {
        for (int64_t ii = 0; ii < rows; ++ii) {
          const T* src = data + (i0 + s + ii) * ld + p0;
          for (int64_t p = 0; p < kc; ++p) dst[p * mr + ii] = widen(src[p]);
        }
      } else {
        for (int64_t p = 0; p < kc; ++p) {
          const T* src = data + (p0 + p) * ld + i0 + s;
          for (int64_t ii = 0; ii < rows; ++ii) dst[p * mr + ii] = widen(src[ii]);
        }
      }
    }
  }
};

// op(B) as a [k x n] matrix: B stored [k, n] (ld = n) or, transposed, [n, k] (ld = k).
template <typename T>
struct DenseB final : BPacker {
  const T* data;
  int64_t ld;
  bool trans;
  DenseB(const T* d, int64_t l, bool t) : data(d), ld(l), trans(t) {}

  void pack(int64_t p0, int64_t kc, int64_t j0, int64_t nc, int nr, float* dst) const override {
    for (int64_t s = 0; s < nc; s += nr, dst += nr * kc) {
      const int64_t cols = std::min<int64_t>(nr, nc - s);
      if (cols < nr) std::memset(dst, 0, sizeof(float) * nr * kc);
      if (!trans) {
        for (int64_t p = 0; p < kc; ++p) {
          const T* src = data + (p0 + p) * ld + j0 + s;
          for (int64_t jj = 0; jj < cols; ++jj) dst[p * nr + jj] = widen(src[jj]);
        }
      } else {
        for (int64_t jj = 0; jj < cols; ++jj) {
          const T* src = data + (j0 + s + jj) * ld + p0;
          for (int64_t p = 0; p < kc; ++p) dst[p * nr + jj] = widen(src[p]);
        }
      }
    }
  }
};

struct MatmulArgs {
  int64_t batch, m, k, n, a_stride, b_stride;
  bool trans_a, trans_b;
  bool accumulate;  // out += op(A)·op(B) instead of out = …
};

template <typename TA, typename TB>
void run_matmul(const MatmulArgs& g, const TA* a, const TB* b, float* out) {
  const int64_t flops = g.m * g.n * std::max<int64_t>(g.k, 1);
  const GemmKernel* k16 = nullptr;  // bf16 x bf16 with AVX512-BF16: no widening, vdpbf16ps
  if constexpr (std::is_same_v<TA, uint16_t> && std::is_same_v<TB, uint16_t>) k16 = gemm_bf16_kernel();
  auto one = [&](int64_t i, bool parallel) {
    const TA* ai = a + i * g.a_stride;
    const TB* bi = b + i * g.b_stride;
    const int64_t lda = g.trans_a ? g.m : g.k, ldb = g.trans_b ? g.k : g.n;
    float* oi = out + i * g.m * g.n;
    if constexpr (std::is_same_v<TA, uint16_t> && std::is_same_v<TB, uint16_t>) {
      if (k16) {
        gemm(*k16, g.m, g.n, g.k, Bf16PairA(ai, lda, g.trans_a), Bf16PairB(bi, ldb, g.trans_b), oi, g.n, parallel, 1,
             g.accumulate);
        return;
      }
    }
    gemm(g.m, g.n, g.k, DenseA<TA>(ai, lda, g.trans_a), DenseB<TB>(bi, ldb, g.trans_b), oi, g.n, parallel, 1,
         g.accumulate);
  };
  // Many small matrices (attention-style batches): one matrix per task. Otherwise parallel inside.
  if (g.batch >= num_threads() && flops < (int64_t{1} << 22)) {
    parallel_for(
        static_cast<std::size_t>(g.batch),
        [&](std::size_t lo, std::size_t hi) {
          for (std::size_t i = lo; i < hi; ++i) one(static_cast<int64_t>(i), false);
        },
        1);
  } else {
    for (int64_t i = 0; i < g.batch; ++i) one(i, true);
  }
}

// Elements an input must hold: the last batch matrix ends at (batch-1)*stride + size.
bool need(Napi::Env env, int64_t batch, int64_t stride, int64_t size, const char* what, int64_t& out) {
  if (batch == 0) return (out = 0, true);
  int64_t span;
  if (!gemm_args::checked_mul(env, batch - 1, stride, what, span)) return false;
  out = span + size;
  if (out > 9007199254740991LL) return gemm_args::fail_range(env, std::string(what) + ": size overflows");
  return true;
}

// matmul(a, b, out, batch, m, k, n, transA, transB, aBatchStride, bBatchStride[, aIsF16, bIsF16[, accumulate]])
// a, b: Float32Array or Uint16Array (bf16 bits, or f16 bits when flagged: the other operand must then be
// f32); out: Float32Array [batch*m*n]. accumulate: out += op(A)·op(B) (out is read) instead of out = ….
Napi::Value Matmul(const Napi::CallbackInfo& info) {
  using namespace gemm_args;
  auto env = info.Env();
  if (info.Length() != 11 && info.Length() != 13 && info.Length() != 14) {
    fail_type(env,
              "matmul(a, b, out, batch, m, k, n, transA, transB, aBatchStride, bBatchStride[, aIsF16, bIsF16[, "
              "accumulate]]): expected 11 arguments (13 with the f16 flags, 14 with accumulate)");
    return env.Undefined();
  }
  bool a_f16 = false, b_f16 = false, accumulate = false;
  if (info.Length() >= 13 && (!get_bool(env, info[11], "aIsF16", a_f16) || !get_bool(env, info[12], "bIsF16", b_f16)))
    return env.Undefined();
  if (info.Length() == 14 && !get_bool(env, info[13], "accumulate", accumulate)) return env.Undefined();
  MatmulArgs g{};
  g.accumulate = accumulate;
  if (!get_size(env, info[3], "batch", g.batch) || !get_size(env, info[4], "m", g.m) ||
      !get_size(env, info[5], "k", g.k) || !get_size(env, info[6], "n", g.n) ||
      !get_bool(env, info[7], "transA", g.trans_a) || !get_bool(env, info[8], "transB", g.trans_b) ||
      !get_size(env, info[9], "aBatchStride", g.a_stride) || !get_size(env, info[10], "bBatchStride", g.b_stride))
    return env.Undefined();
  int64_t mk, kn, mn, bmn, need_a, need_b;
  if (!checked_mul(env, g.m, g.k, "m*k", mk) || !checked_mul(env, g.k, g.n, "k*n", kn) ||
      !checked_mul(env, g.m, g.n, "m*n", mn) || !checked_mul(env, g.batch, mn, "batch*m*n", bmn) ||
      !need(env, g.batch, g.a_stride, mk, "a", need_a) || !need(env, g.batch, g.b_stride, kn, "b", need_b))
    return env.Undefined();
  float* out;
  if (!get_array<float>(env, info[2], "out", bmn, out)) return env.Undefined();
  const bool a16 = is_typed(info[0], napi_uint16_array), b16 = is_typed(info[1], napi_uint16_array);
  float *af = nullptr, *bf = nullptr;
  uint16_t *ah = nullptr, *bh = nullptr;
  if (!(a16 ? get_array<uint16_t>(env, info[0], "a", need_a, ah) : get_array<float>(env, info[0], "a", need_a, af)))
    return env.Undefined();
  if (!(b16 ? get_array<uint16_t>(env, info[1], "b", need_b, bh) : get_array<float>(env, info[1], "b", need_b, bf)))
    return env.Undefined();
  if ((a_f16 && !ah) || (b_f16 && !bh) || (a_f16 && !bf) || (b_f16 && !af)) {
    fail_type(env, "matmul: an f16 operand must be a Uint16Array and the other operand a Float32Array");
    return env.Undefined();
  }
  if (a_f16) run_matmul(g, reinterpret_cast<const F16*>(ah), bf, out);
  else if (b_f16) run_matmul(g, af, reinterpret_cast<const F16*>(bh), out);
  else if (af && bf) run_matmul(g, af, bf, out);
  else if (af) run_matmul(g, af, bh, out);
  else if (bf) run_matmul(g, ah, bf, out);
  else run_matmul(g, ah, bh, out);
  return env.Undefined();
}

// gemmIsa(): the f32 micro-kernel in use; gemmIsa("avx2"|"avx512"|"scalar"|""|"avx512bf16"): force one
// (tests/benchmarks). Any forced f32 ISA also rules out the bf16 k-pair kernel (gemmBf16Kernel).
Napi::Value GemmIsa(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  if (info.Length() >= 1 && !info[0].IsUndefined()) {
    if (!info[0].IsString()) {
      gemm_args::fail_type(env, "gemmIsa(isa): expected \"avx512bf16\", \"avx512\", \"avx2\", \"scalar\" or \"\"");
      return env.Undefined();
    }
    set_gemm_kernel(info[0].As<Napi::String>().Utf8Value().c_str());
  }
  return Napi::String::New(env, gemm_kernel().name);
}

// gemmBf16Kernel(): the micro-kernel a bf16 x bf16 matmul runs on now: "avx512bf16" (k pairs,
// vdpbf16ps) or, widening to f32 while packing, the gemmIsa() kernel.
Napi::Value GemmBf16Kernel(const Napi::CallbackInfo& info) {
  const GemmKernel* k16 = gemm_bf16_kernel();
  return Napi::String::New(info.Env(), k16 ? k16->name : gemm_kernel().name);
}

// gemvIsa(): the vector ISA the 4-bit GEMV (m <= 4) runs on: the widest the gemmIsa request allows on
// this CPU, which can be wider than gemmIsa() (Zen 4 runs the AVX2 GEMM tile and the AVX-512 GEMV).
Napi::Value GemvIsa(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), gemm_isa_cap()); }

Register reg_matmul("matmul", Matmul);
Register reg_gemv_isa("gemvIsa", GemvIsa);
Register reg_gemm_bf16_kernel("gemmBf16Kernel", GemmBf16Kernel);
Register reg_gemm_isa("gemmIsa", GemmIsa);

}  // namespace
}  // namespace qlora
