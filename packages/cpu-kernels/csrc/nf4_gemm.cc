// Fused 4-bit GEMMs over the blocked driver (gemm_driver.h). The B packer dequantizes exactly the
// kc x nc tile it packs, so the dequantized weight never exists as a whole:
//   matmul4bit:           y[m, n]  = x[m, k] . dequant(W)^T   (B(p, j) = W[j, p])
//   matmul4bitInputGrad:  dx[m, k] = dy[m, n] . dequant(W)     (B(p, j) = W[p, j])
// Small m (<= 4) forward goes to the streaming GEMV (nf4_gemv.cc) when its layout preconditions hold.
// Reference: packages/tensor reference backend matmul4bit / matmul4bitInputGrad (tests: test/nf4.test.ts).
#include <algorithm>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <string>
#include <vector>

#include "gemm_driver.h"
#include "gemm_napi.h"
#include "gemm_pack.h"
#include "isa.h"
#include "nf4_format.h"
#include "nf4_gemv.h"
#include "registry.h"

namespace qlora {
namespace {

// Decoding a 4-bit weight while packing costs several times a plain copy: tell the driver, so it
// splits work over N and every weight tile is decoded by one task only.
constexpr int kDequantWeight = 16;

// dst[p * nr + j] = src[j * kc + p] for p < kc, j < nr: 8x8 register transposes with AVX2 when
// nr is a multiple of 8, scalar otherwise and for the kc % 8 tail. Pure copies (bit-identical).
#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) int64_t transpose_to_panel_avx2(const float* src, int64_t kc, int nr, float* dst) {
  int64_t p = 0;
  for (; p + 8 <= kc; p += 8) {
    for (int j = 0; j < nr; j += 8) {
      __m256 col[8];
      transpose_8x8(src + j * kc, kc, 8, p, col);
      float* d = dst + p * nr + j;
#pragma GCC unroll 8
      for (int c = 0; c < 8; ++c) _mm256_storeu_ps(d + c * nr, col[c]);
    }
  }
  return p;
}
#endif

void transpose_to_panel(const float* src, int64_t kc, int nr, float* dst) {
  int64_t p = 0;
#if defined(__x86_64__)
  if (nr % 8 == 0 && isa().avx2_fma) p = transpose_to_panel_avx2(src, kc, nr, dst);
#endif
  for (; p < kc; ++p)
    for (int j = 0; j < nr; ++j) dst[p * nr + j] = src[j * kc + p];
}

// Row-major f32 [rows, ld] operand A (x or dy), no transpose.
struct RowMajorA final : APacker {
  const float* data;
  int64_t ld;
  RowMajorA(const float* d, int64_t l) : data(d), ld(l) {}
  void pack(int64_t i0, int64_t mc, int64_t p0, int64_t kc, int mr, float* dst) const override {
    for (int64_t s = 0; s < mc; s += mr, dst += mr * kc)
      pack_a_rows_f32(data + (i0 + s) * ld + p0, ld, std::min<int64_t>(mr, mc - s), kc, mr, dst);
  }
};

// B(p, j) = W[j, p]: each panel column is a run of one W row. The nr runs of a panel are decoded
// into a [nr][kc] scratch (whole runs: the AVX2 decoder's 64-weight chunks) and transposed into the
// panel's [kc][nr] layout 8x8 at a time, instead of kc scalar stores at stride nr per column.
struct QuantTransposedB final : BPacker {
  const Quant4& q;
  explicit QuantTransposedB(const Quant4& w) : q(w) {}
  void pack(int64_t p0, int64_t kc, int64_t j0, int64_t nc, int nr, float* dst) const override {
    static thread_local std::vector<float> runs;
    runs.resize(static_cast<std::size_t>(kc) * nr);
    for (int64_t s = 0; s < nc; s += nr, dst += nr * kc) {
      const int64_t cols = std::min<int64_t>(nr, nc - s);
      for (int64_t jj = 0; jj < cols; ++jj) nf4_decode_run(q, (j0 + s + jj) * q.k + p0, kc, runs.data() + jj * kc);
      if (cols < nr) std::fill(runs.begin() + cols * kc, runs.end(), 0.0f);
      transpose_to_panel(runs.data(), kc, nr, dst);
    }
  }
};

// B(p, j) = W[p, j]: each panel row is a contiguous run of W row p. The whole nc-wide run of a row
// is decoded at once (the AVX2 decoder needs runs of >= 64 weights; one nr = 16 run per call went
// to the scalar loop) and copied nr floats at a time into the panels.
struct QuantB final : BPacker {
  const Quant4& q;
  explicit QuantB(const Quant4& w) : q(w) {}
  void pack(int64_t p0, int64_t kc, int64_t j0, int64_t nc, int nr, float* dst) const override {
    static thread_local std::vector<float> run;
    run.resize(static_cast<std::size_t>(nc));
    const int64_t panel = nr * kc;
    for (int64_t p = 0; p < kc; ++p) {
      nf4_decode_run(q, (p0 + p) * q.k + j0, nc, run.data());
      float* row = dst + p * nr;
      for (int64_t s = 0; s < nc; s += nr, row += panel) {
        const int64_t cols = std::min<int64_t>(nr, nc - s);
        std::memcpy(row, run.data() + s, sizeof(float) * cols);
        if (cols < nr) std::fill(row + cols, row + nr, 0.0f);
      }
    }
  }
};

bool get_quant_number(Napi::Env env, const Napi::Object& o, const char* key, int64_t& out) {
  return gemm_args::get_size(env, o.Get(key), (std::string("w.") + key).c_str(), out);
}

// w = { quantType: "nf4"|"fp4", blocksize, n, k, codes: Uint8Array, absmax?: Float32Array,
//       qabsmax?: Uint8Array, code?: Float32Array, nestedAbsmax?: Float32Array, nestedBlocksize?, offset? }
bool parse_quant(Napi::Env env, const Napi::Value& v, Quant4& q) {
  using namespace gemm_args;
  if (!v.IsObject()) return fail_type(env, "w: expected a quantized-weight object");
  auto o = v.As<Napi::Object>();
  auto type = o.Get("quantType");
  const std::string t = type.IsString() ? type.As<Napi::String>().Utf8Value() : "";
  if (t != "nf4" && t != "fp4") return fail_type(env, "w.quantType: expected \"nf4\" or \"fp4\"");
  q.lut = t == "nf4" ? nf4_lut() : fp4_lut();
  if (!get_quant_number(env, o, "blocksize", q.blocksize) || !get_quant_number(env, o, "n", q.n) ||
      !get_quant_number(env, o, "k", q.k))
    return false;
  if (q.blocksize < 1) return fail_range(env, "w.blocksize: expected a positive integer");
  int64_t nk;
  if (!checked_mul(env, q.n, q.k, "w.n*w.k", nk)) return false;
  uint8_t* codes;
  if (!get_array<uint8_t>(env, o.Get("codes"), "w.codes", (nk + 1) / 2, codes)) return false;
  q.codes = codes;
  const int64_t blocks = q.blocks();
  auto absmax = o.Get("absmax");
  if (!absmax.IsUndefined() && !absmax.IsNull()) {
    float* a;
    if (!get_array<float>(env, absmax, "w.absmax", blocks, a)) return false;
    q.absmax = a;
    return true;
  }
  uint8_t* qa;
  float *code, *nested;
  if (!get_array<uint8_t>(env, o.Get("qabsmax"), "w.qabsmax (no f32 absmax given)", blocks, qa) ||
      !get_array<float>(env, o.Get("code"), "w.code", 256, code) || !get_quant_number(env, o, "nestedBlocksize", q.nested_blocksize))
    return false;
  if (q.nested_blocksize < 1) return fail_range(env, "w.nestedBlocksize: expected a positive integer");
  if (!get_array<float>(env, o.Get("nestedAbsmax"), "w.nestedAbsmax", (blocks + q.nested_blocksize - 1) / q.nested_blocksize, nested))
    return false;
  auto offset = o.Get("offset");
  if (!offset.IsNumber()) return fail_type(env, "w.offset: expected a number (float32 value)");
  q.qabsmax = qa;
  q.code = code;
  q.nested = nested;
  q.offset = static_cast<float>(offset.As<Napi::Number>().DoubleValue());
  return true;
}

// Shared front half of both entry points: (input, m, out, w) with input [m, inDim], out [m, outDim].
bool parse_call(const Napi::CallbackInfo& info, const char* sig, bool grad, Quant4& q, float*& in, int64_t& m, float*& out) {
  using namespace gemm_args;
  auto env = info.Env();
  if (info.Length() != 4) return fail_type(env, std::string(sig) + ": expected 4 arguments");
  if (!parse_quant(env, info[3], q) || !get_size(env, info[1], "m", m)) return false;
  const int64_t in_dim = grad ? q.n : q.k, out_dim = grad ? q.k : q.n;
  int64_t in_len, out_len;
  return checked_mul(env, m, in_dim, "m*inDim", in_len) && checked_mul(env, m, out_dim, "m*outDim", out_len) &&
         get_array<float>(env, info[0], grad ? "dy" : "x", in_len, in) &&
         get_array<float>(env, info[2], "out", out_len, out);
}

// matmul4bit(x: Float32Array [m,k], m, out: Float32Array [m,n], w)
Napi::Value Matmul4bit(const Napi::CallbackInfo& info) {
  Quant4 q;
  float *x, *out;
  int64_t m;
  if (!parse_call(info, "matmul4bit(x, m, out, w)", false, q, x, m, out)) return info.Env().Undefined();
  if (!nf4_gemv(q, x, m, out)) {
    RowMajorA a(x, q.k);
    QuantTransposedB b(q);
    gemm(m, q.n, q.k, a, b, out, q.n, true, kDequantWeight);
  }
  return info.Env().Undefined();
}

// matmul4bitInputGrad(dy: Float32Array [m,n], m, out: Float32Array [m,k], w)
Napi::Value Matmul4bitInputGrad(const Napi::CallbackInfo& info) {
  Quant4 q;
  float *dy, *out;
  int64_t m;
  if (!parse_call(info, "matmul4bitInputGrad(dy, m, out, w)", true, q, dy, m, out)) return info.Env().Undefined();
  RowMajorA a(dy, q.n);
  QuantB b(q);
  gemm(m, q.k, q.n, a, b, out, q.k, true, kDequantWeight);
  return info.Env().Undefined();
}

// matmul4bitTiled(x, m, out, w): the tiled GEMM path even for small m (tests compare it with the GEMV).
Napi::Value Matmul4bitTiled(const Napi::CallbackInfo& info) {
  Quant4 q;
  float *x, *out;
  int64_t m;
  if (!parse_call(info, "matmul4bitTiled(x, m, out, w)", false, q, x, m, out)) return info.Env().Undefined();
  RowMajorA a(x, q.k);
  QuantTransposedB b(q);
  gemm(m, q.n, q.k, a, b, out, q.n, true, kDequantWeight);
  return info.Env().Undefined();
}

Register reg_mm4("matmul4bit", Matmul4bit);
Register reg_mm4_grad("matmul4bitInputGrad", Matmul4bitInputGrad);
Register reg_mm4_tiled("matmul4bitTiled", Matmul4bitTiled);

}  // namespace
}  // namespace qlora
