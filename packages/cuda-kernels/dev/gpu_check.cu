// Standalone GPU check: validates every kernel of csrc/kernels against CPU references written here
// (ports of the reference backend / @qlora/nf4 semantics, plus the NF4 golden vectors of spec
// bnb-4bit-format Appendix B), then benchmarks and prints a table. Needs only nvcc and a GPU:
// no Node.js, no network. Built and run by scripts/gpu-check.sh.
#include "harness.h"

// ------------------------------------------------------------------ CPU references: 4-bit formats
static const uint32_t kNf4[16] = {0xbf800000u, 0xbf3239b1u, 0xbf066b30u, 0xbeca32a0u, 0xbe91a24du, 0xbe3d353fu,
                                  0xbdba7871u, 0x00000000u, 0x3da2faffu, 0x3e24cae3u, 0x3e7c04ddu, 0x3ead033au,
                                  0x3ee1a4b8u, 0x3f1007abu, 0x3f3913b3u, 0x3f800000u};
static const uint32_t kFp4[16] = {0x00000000u, 0x3baaaaabu, 0x3f2aaaabu, 0x3f800000u, 0x3eaaaaabu, 0x3f000000u,
                                  0x3e2aaaabu, 0x3e800000u, 0x80000000u, 0xbbaaaaabu, 0xbf2aaaabu, 0xbf800000u,
                                  0xbeaaaaabu, 0xbf000000u, 0xbe2aaaabu, 0xbe800000u};
static const uint32_t kNf4T[15] = {0xbf591cd8u, 0xbf1c5270u, 0xbeeb8480u, 0xbeadea76u, 0xbe703cecu,
                                   0xbe0d38bcu, 0xbd3a7871u, 0x3d22faffu, 0x3df64862u, 0x3e5067e0u,
                                   0x3e9582d4u, 0x3ec753f9u, 0x3f006d04u, 0x3f248dafu, 0x3f5c89dau};
static uint8_t hNf4(float y) {
  uint8_t c = 0;
  for (int k = 0; k < 15; ++k) c += y > bitsToF(kNf4T[k]) ? 1 : 0;
  return c;
}
static uint8_t hFp4(float y) {
  const uint8_t sign = y < 0.f ? 8 : 0;
  const float a = std::fabs(y);
  uint8_t m;
  if (a > bitsToF(0x3e955555u)) m = a > bitsToF(0x3f155550u) ? (a > bitsToF(0x3f555555u) ? 3 : 2) : (a > bitsToF(0x3ed55556u) ? 5 : 4);
  else m = a > bitsToF(0x3db00000u) ? (a > bitsToF(0x3e555555u) ? 7 : 6) : (a > bitsToF(0x3b2aaab9u) ? 1 : 0);
  return m + sign;
}
static void hQuant4(const std::vector<float>& x, int bs, bool fp4, std::vector<uint8_t>& codes, std::vector<float>& absmax) {
  const int64_t n = x.size(), nb = (n + bs - 1) / bs;
  codes.assign((n + 1) / 2, 0);
  absmax.assign(nb, 0);
  for (int64_t b = 0; b < nb; ++b) {
    float m = -3.402823466e38f;
    for (int64_t i = b * bs; i < std::min<int64_t>(n, (b + 1) * bs); ++i) m = std::fmax(m, std::fabs(x[i]));
    absmax[b] = m;
  }
  for (int64_t j = 0; j < (n + 1) / 2; ++j) {
    const int64_t i = 2 * j;
    volatile float r = 1.0f / absmax[i / bs];  // IEEE reciprocal (volatile: no reassociation)
    const float y0 = x[i] * r, y1 = (i + 1 < n ? x[i + 1] : 0.f) * r;
    codes[j] = uint8_t(((fp4 ? hFp4(y0) : hNf4(y0)) << 4) | (fp4 ? hFp4(y1) : hNf4(y1)));
  }
}
static uint8_t hQuant8(const float* c, float y) {
  int pivot = 127, lo = 0, hi = 255;
  float lower = -1.f, upper = 1.f, val = c[127];
  for (int step = 64; step >= 1; step >>= 1) {
    if (y > val) { lo = pivot; lower = val; pivot += step; }
    else { hi = pivot; upper = val; pivot -= step; }
    val = c[pivot];
  }
  if (hi == 255) upper = c[255];
  if (lo == 0) lower = c[0];
  volatile float mu = (upper + val) * 0.5f, ml = (lower + val) * 0.5f;
  if (y > val) return uint8_t(y > mu ? hi : pivot);
  return uint8_t(y < ml ? lo : pivot);
}
static std::vector<float> mapOf(const uint32_t* bits) {
  std::vector<float> m(256);
  for (int i = 0; i < 256; ++i) m[i] = bitsToF(bits[i]);
  return m;
}

static std::string hexBytes(const std::vector<uint8_t>& v) {
  std::string s;
  char b[4];
  for (size_t i = 0; i < v.size(); ++i) { std::snprintf(b, sizeof b, "%02x", v[i]); s += (i ? " " : "") + std::string(b); }
  return s;
}

// ------------------------------------------------------------------ validation: 4-bit formats
static void checkQuant4() {
  std::printf("NF4/FP4 quantize, dequantize, double quant\n");
  auto quantHex = [](const std::vector<float>& x, int bs, bool fp4) {
    float* dx = up(x);
    uint8_t* codes = dalloc<uint8_t>((x.size() + 1) / 2);
    float* am = dalloc<float>((x.size() + bs - 1) / bs);
    quantize4bit(S(), dx, F32, int64_t(x.size()), bs, fp4, codes, am);
    std::string h = hexBytes(down(codes, (x.size() + 1) / 2));
    dfree(dx); dfree(codes); dfree(am);
    return h;
  };
  std::vector<float> v1(64);
  for (int i = 0; i < 64; ++i) v1[i] = (i - 32) / 16.0f;
  guarded("V1 NF4 bytes (spec Appendix B)", [&] {
    const std::string h = quantHex(v1, 64, false);
    report("V1 NF4 bytes (spec Appendix B)", h == "00 00 01 11 11 11 12 22 22 33 33 44 45 55 66 67 77 88 99 9a aa bb bc cc cd dd de ee ee ee ff ff", h);
  });
  guarded("V1 FP4 bytes", [&] {
    const std::string h = quantHex(v1, 64, true);
    report("V1 FP4 bytes", h == "bb bb bb aa aa aa aa dd dd dc cc cf ff ee ee 99 01 16 66 67 77 44 44 55 55 52 22 22 22 23 33 33", h);
  });
  guarded("V2 odd n", [&] {
    const std::vector<float> v2 = {0.5f, -1.0f, 0.25f, 0.0f, -0.125f};
    const std::string a = quantHex(v2, 64, false), b = quantHex(v2, 64, true);
    report("V2 odd n NF4 c0 a7 67 / FP4 5b 70 e0", a == "c0 a7 67" && b == "5b 70 e0", a + " / " + b);
  });
  guarded("V3 zero block", [&] {
    const std::vector<float> z(64, 0.f);
    const std::string a = quantHex(z, 64, false), b = quantHex(z, 64, true);
    report("V3 zero block → 00 (NF4 and FP4)", a.find_first_not_of("0 ") == std::string::npos && b.find_first_not_of("0 ") == std::string::npos, a.substr(0, 11));
  });
  for (int bs : {32, 64, 128, 1024, 4096}) {
    for (bool fp4 : {false, true}) {
      const std::string name = std::string(fp4 ? "FP4" : "NF4") + " random bs=" + std::to_string(bs) + " bit-exact vs CPU (f32 and bf16 input)";
      guarded(name, [&] {
        const int64_t n = int64_t(bs) * 37 + 5;
        std::vector<float> x = randn(n, 2.f);
        x[3] = 0.f;
        x[n / 2] = NAN;  // ignored by absmax, code 0
        std::vector<uint8_t> wc;
        std::vector<float> wa;
        hQuant4(x, bs, fp4, wc, wa);
        float* dx = up(x);
        uint8_t* codes = dalloc<uint8_t>((n + 1) / 2);
        float* am = dalloc<float>(wa.size());
        quantize4bit(S(), dx, F32, n, bs, fp4, codes, am);
        bool ok = down(codes, wc.size()) == wc && std::memcmp(down(am, wa.size()).data(), wa.data(), wa.size() * 4) == 0;
        // bf16 input: the CPU reference sees the bf16-rounded values
        std::vector<uint16_t> xb(n);
        std::vector<float> xr(n);
        for (int64_t i = 0; i < n; ++i) { xb[i] = toBf16(x[i]); xr[i] = bf16ToF(xb[i]); }
        hQuant4(xr, bs, fp4, wc, wa);
        uint16_t* dxb = up(xb);
        quantize4bit(S(), dxb, BF16, n, bs, fp4, codes, am);
        ok = ok && down(codes, wc.size()) == wc;
        report(name, ok);
        dfree(dx); dfree(dxb); dfree(codes); dfree(am);
      });
    }
  }
  guarded("V4 double quant", [&] {
    // 4 blocks of 64: absmax [1,2,3,4], offset 2.5 → qabsmax [0,47,207,255], nested [1.5]
    std::vector<float> x(256);
    for (int b = 0; b < 4; ++b)
      for (int j = -32; j < 32; ++j) x[b * 64 + j + 32] = (j / 32.0f) * (b + 1);
    const std::vector<float> code = mapOf(kSignedMapBits);
    float* dx = up(x);
    uint8_t* codes = dalloc<uint8_t>(128);
    float* am = dalloc<float>(4);
    quantize4bit(S(), dx, F32, 256, 64, false, codes, am);
    const std::vector<float> amh = down(am, 4);
    float* dcode = up(code);
    uint8_t* q = dalloc<uint8_t>(4);
    float* nested = dalloc<float>(1);
    quantizeBlockwise8(S(), am, 4, 2.5f, 256, dcode, q, nested);
    const std::vector<uint8_t> qh = down(q, 4);
    const std::vector<float> nh = down(nested, 1);
    Absmax4bit a;
    a.qabsmax = q; a.code = dcode; a.nestedAbsmax = nested; a.nestedBlocksize = 256; a.offset = 2.5f;
    float* out = dalloc<float>(256);
    dequantize4bit(S(), codes, 256, 64, false, a, out, F32);
    const std::vector<float> o = down(out, 256);
    const float want[8] = {-4, -4, -4, -4, -4, -2.7847712f, -2.7847712f, -2.7847712f};
    bool ok = amh == std::vector<float>({1, 2, 3, 4}) && qh == std::vector<uint8_t>({0, 47, 207, 255}) && nh[0] == 1.5f;
    for (int i = 0; i < 8; ++i) ok = ok && std::fabs(o[192 + i] - want[i]) <= 1e-6f;
    // recovered absmax of block 0 = 1.0105469226837158 → element 0 = −1.0105469
    ok = ok && o[0] == -1.0105469226837158f;
    char d[160];
    std::snprintf(d, sizeof d, "qabsmax %d %d %d %d nested %g out[0] %.9g out[197] %.9g", qh[0], qh[1], qh[2], qh[3], nh[0], o[0], o[197]);
    report("V4 double quant (quantizeBlockwise8 + nested dequant)", ok, d);
    for (void* p : {(void*)dx, (void*)codes, (void*)am, (void*)dcode, (void*)q, (void*)nested, (void*)out}) dfree(p);
  });
  for (bool fp4 : {false, true}) {
    const std::string name = std::string("dequantize ") + (fp4 ? "FP4" : "NF4") + " + DQ → f32/bf16 bit-exact vs CPU";
    guarded(name, [&] {
      const int bs = 64;
      const int64_t n = 64 * 1000 + 48;  // not a multiple of 16·blocks: exercises the scalar tail
      const int64_t nb = (n + bs - 1) / bs;
      std::vector<uint8_t> codes((n + 1) / 2), qabs(nb);
      for (auto& c : codes) c = uint8_t(gRng());
      for (auto& c : qabs) c = uint8_t(gRng());
      const std::vector<float> code = mapOf(kSignedMapBits);
      std::vector<float> nested = randu((nb + 255) / 256, 0.1f, 2.f);
      const float offset = 0.731f;
      std::vector<float> want(n);
      std::vector<uint16_t> wantB(n);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t b = i / bs;
        volatile float s1 = code[qabs[b]] * nested[b / 256];
        const float absmax = s1 + offset;
        const uint8_t byte = codes[i / 2];
        const uint8_t c = (i & 1) ? (byte & 15) : (byte >> 4);
        want[i] = bitsToF((fp4 ? kFp4 : kNf4)[c]) * absmax;
        wantB[i] = toBf16(want[i]);
      }
      uint8_t* dc = up(codes);
      uint8_t* dq = up(qabs);
      float* dcode = up(code);
      float* dn = up(nested);
      Absmax4bit a;
      a.qabsmax = dq; a.code = dcode; a.nestedAbsmax = dn; a.offset = offset;
      float* out = dalloc<float>(n);
      uint16_t* outB = dalloc<uint16_t>(n);
      dequantize4bit(S(), dc, n, bs, fp4, a, out, F32);
      dequantize4bit(S(), dc, n, bs, fp4, a, outB, BF16);
      const bool ok = std::memcmp(down(out, n).data(), want.data(), n * 4) == 0 && down(outB, n) == wantB;
      report(name, ok);
      for (void* p : {(void*)dc, (void*)dq, (void*)dcode, (void*)dn, (void*)out, (void*)outB}) dfree(p);
    });
  }
}

// ------------------------------------------------------------------ validation: primitives
static void checkElementwise() {
  std::printf("primitives: copy/cast, unary, binary, reduce\n");
  guarded("copy strided transpose f32 → bf16", [&] {
    const int R = 37, C = 53;
    std::vector<float> x = randn(R * C);
    View v;  // transpose view [C, R] of the [R, C] array
    v.rank = 2; v.shape[0] = C; v.shape[1] = R; v.strides[0] = 1; v.strides[1] = C;
    float* dx = up(x);
    uint16_t* out = dalloc<uint16_t>(R * C);
    copyStrided(S(), dx, F32, v, out, BF16);
    std::vector<uint16_t> want(R * C);
    for (int c = 0; c < C; ++c) for (int r = 0; r < R; ++r) want[c * R + r] = toBf16(x[r * C + c]);
    report("copy strided transpose f32 → bf16 (exact RNE)", down(out, R * C) == want);
    dfree(dx); dfree(out);
  });
  guarded("unary", [&] {
    const int n = 10007;
    std::vector<float> x = randn(n, 3.f);
    float* dx = up(x);
    float* y = dalloc<float>(n);
    bool all = true;
    std::string worst;
    for (int op = U_NEG; op <= U_SIGN; ++op) {
      unary(S(), op, dx, y, n);
      std::vector<float> g = down(y, n);
      std::vector<double> w(n);
      for (int i = 0; i < n; ++i) {
        const double a = x[i];
        switch (op) {
          case U_NEG: w[i] = -a; break;
          case U_EXP: w[i] = std::exp(a); break;
          case U_LOG: w[i] = std::log(a); break;
          case U_SQRT: w[i] = std::sqrt(a); break;
          case U_RSQRT: w[i] = 1 / std::sqrt(a); break;
          case U_ABS: w[i] = std::fabs(a); break;
          case U_SIGMOID: w[i] = 1 / (1 + std::exp(-a)); break;
          case U_SILU: w[i] = a / (1 + std::exp(-a)); break;
          case U_RELU: w[i] = a > 0 ? a : 0; break;
          case U_TANH: w[i] = std::tanh(a); break;
          case U_RECIP: w[i] = 1 / a; break;
          case U_SQUARE: w[i] = a * a; break;
          default: w[i] = a > 0 ? 1 : a < 0 ? -1 : a;
        }
      }
      const Cmp c = compare(g, w, 1e-6, 1e-5);
      if (c.bad >= 0) { all = false; worst += " op" + std::to_string(op); }
    }
    report("unary (13 ops) vs double within 1e-6 + 1e-5·|x|", all, worst);
    dfree(dx); dfree(y);
  });
  guarded("binary broadcast", [&] {
    const int A = 7, B = 33, C = 65;
    std::vector<float> a = randn(A * B * C), b = randn(B);
    View av, bv;
    av.rank = bv.rank = 3;
    av.shape[0] = bv.shape[0] = A; av.shape[1] = bv.shape[1] = B; av.shape[2] = bv.shape[2] = C;
    av.strides[0] = B * C; av.strides[1] = C; av.strides[2] = 1;
    bv.strides[0] = 0; bv.strides[1] = 1; bv.strides[2] = 0;  // b broadcast along axes 0 and 2
    float* da = up(a);
    float* db = up(b);
    float* out = dalloc<float>(A * B * C);
    bool ok = true;
    for (int op : {B_ADD, B_MUL, B_DIV, B_MAX, B_GT}) {
      binary(S(), op, da, av, db, bv, out);
      std::vector<float> g = down(out, A * B * C);
      for (int i = 0; i < A * B * C && ok; ++i) {
        const float x = a[i], y = b[(i / C) % B];
        const float w = op == B_ADD ? x + y : op == B_MUL ? x * y : op == B_DIV ? x / y : op == B_MAX ? std::fmax(x, y) : (x > y ? 1.f : 0.f);
        ok = g[i] == w;
      }
    }
    report("binary broadcast add/mul/div/max/gt (exact)", ok);
    dfree(da); dfree(db); dfree(out);
  });
  guarded("reduce", [&] {
    const int O = 5, Sz = 1001, I = 17;
    std::vector<float> x = randn(O * Sz * I);
    float* dx = up(x);
    float* out = dalloc<float>(O * I);
    bool ok = true;
    for (int op : {R_SUM, R_MAX, R_MIN}) {
      reduce(S(), op, dx, O, Sz, I, out);
      std::vector<float> g = down(out, O * I);
      std::vector<double> w(O * I);
      for (int o = 0; o < O; ++o)
        for (int i = 0; i < I; ++i) {
          double acc = op == R_SUM ? 0 : op == R_MAX ? -INFINITY : INFINITY;
          for (int s = 0; s < Sz; ++s) {
            const double v = x[(o * Sz + s) * I + i];
            acc = op == R_SUM ? acc + v : op == R_MAX ? std::max(acc, v) : std::min(acc, v);
          }
          w[o * I + i] = acc;
        }
      ok = ok && compare(g, w, 1e-6, 1e-4, 1e-5).bad < 0;
    }
    report("reduce sum/max/min over the middle axis", ok);
    dfree(dx); dfree(out);
  });
}

// ------------------------------------------------------------------ validation: GEMMs
static std::vector<double> hostGemm(const std::vector<float>& A, const std::vector<float>& B, const GemmArgs& g, int64_t as, int64_t bs) {
  std::vector<double> C(int64_t(g.batch) * g.m * g.n, 0.0);
  for (int b = 0; b < g.batch; ++b)
    for (int i = 0; i < g.m; ++i)
      for (int p = 0; p < g.k; ++p) {
        const double a = g.transA ? A[b * as + int64_t(p) * g.m + i] : A[b * as + int64_t(i) * g.k + p];
        for (int j = 0; j < g.n; ++j) {
          const double bb = g.transB ? B[b * bs + int64_t(j) * g.k + p] : B[b * bs + int64_t(p) * g.n + j];
          C[(int64_t(b) * g.m + i) * g.n + j] += a * bb;
        }
      }
  return C;
}

static void checkGemm() {
  std::printf("dense GEMM (cuBLAS: %s)\n", cublasStatus().loaded ? cublasStatus().library.c_str() : ("absent: " + cublasStatus().detail).c_str());
  struct Shape { int batch, m, n, k; bool ta, tb; int64_t as, bs; };
  const Shape shapes[] = {{1, 129, 67, 200, false, false, -1, -1}, {3, 64, 128, 96, true, false, -1, -1},
                          {2, 200, 130, 72, false, true, -1, 0}, {1, 1, 333, 257, true, true, -1, -1},
                          {4, 33, 40, 16, false, true, 0, -1}};
  for (int dtype : {F32, BF16}) {
    for (int path : {0, 1}) {
      if (path == 1 && !cublasStatus().loaded) continue;
      for (const Shape& s : shapes) {
        char name[160];
        std::snprintf(name, sizeof name, "%s %s batch=%d m=%d n=%d k=%d tA=%d tB=%d", dtype == F32 ? "f32" : "bf16",
                      path ? "cuBLAS" : (dtype == F32 ? "own SIMT" : "own tensor-core"), s.batch, s.m, s.n, s.k, s.ta, s.tb);
        guarded(name, [&] {
          GemmArgs g;
          g.batch = s.batch; g.m = s.m; g.n = s.n; g.k = s.k; g.transA = s.ta; g.transB = s.tb;
          g.aBatchStride = s.as; g.bBatchStride = s.bs; g.dtype = dtype;
          const int64_t as = s.as < 0 ? int64_t(s.m) * s.k : s.as, bs = s.bs < 0 ? int64_t(s.k) * s.n : s.bs;
          const int64_t na = (s.batch - 1) * as + int64_t(s.m) * s.k, nb = (s.batch - 1) * bs + int64_t(s.k) * s.n;
          std::vector<float> A = randn(na), B = randn(nb);
          std::vector<uint16_t> Ab(na), Bb(nb);
          for (int64_t i = 0; i < na; ++i) { Ab[i] = toBf16(A[i]); if (dtype == BF16) A[i] = bf16ToF(Ab[i]); }
          for (int64_t i = 0; i < nb; ++i) { Bb[i] = toBf16(B[i]); if (dtype == BF16) B[i] = bf16ToF(Bb[i]); }
          void* dA = dtype == F32 ? (void*)up(A) : (void*)up(Ab);
          void* dB = dtype == F32 ? (void*)up(B) : (void*)up(Bb);
          float* C = dalloc<float>(int64_t(s.batch) * s.m * s.n);
          gemm(S(), g, dA, dB, C, path);
          reportCmp(name, compare(down(C, int64_t(s.batch) * s.m * s.n), hostGemm(A, B, g, as, bs), 1e-5, 1e-4, 1e-5));
          dfree(dA); dfree(dB); dfree(C);
        });
      }
    }
  }
}

static void checkGemm4bit() {
  std::printf("fused 4-bit GEMM / GEMV / input grad\n");
  struct Case { int m, n, k, bs; bool fp4, nested; };
  const Case cases[] = {{1, 300, 4096, 64, false, false}, {1, 77, 200, 64, false, true},  {77, 200, 336, 64, false, false},
                        {64, 100, 200, 32, true, false},   {130, 257, 512, 128, false, true}, {256, 384, 1024, 64, false, true}};
  for (const Case& c : cases) {
    char name[160];
    std::snprintf(name, sizeof name, "%s m=%d n=%d k=%d bs=%d%s", c.fp4 ? "FP4" : "NF4", c.m, c.n, c.k, c.bs, c.nested ? " DQ" : "");
    guarded(name, [&] {
      const int64_t nw = int64_t(c.n) * c.k, nb = (nw + c.bs - 1) / c.bs;
      std::vector<float> w = randn(nw);
      std::vector<uint8_t> codes;
      std::vector<float> absmax;
      hQuant4(w, c.bs, c.fp4, codes, absmax);
      // Optional double quant of absmax, computed on the host (same rules as the kernel).
      const std::vector<float> code = mapOf(kSignedMapBits);
      std::vector<uint8_t> qabs(nb);
      std::vector<float> nested((nb + 255) / 256);
      double sum = 0;
      for (float v : absmax) sum += v;
      const float offset = float(sum / nb);
      if (c.nested) {
        for (int64_t b0 = 0; b0 < nb; b0 += 256) {
          float m = 0;
          for (int64_t b = b0; b < std::min(nb, b0 + 256); ++b) m = std::fmax(m, std::fabs(absmax[b] - offset));
          nested[b0 / 256] = m;
          for (int64_t b = b0; b < std::min(nb, b0 + 256); ++b) qabs[b] = hQuant8(code.data(), (absmax[b] - offset) * (1.0f / m));
        }
        for (int64_t b = 0; b < nb; ++b) { volatile float s1 = code[qabs[b]] * nested[b / 256]; absmax[b] = s1 + offset; }
      }
      // Reference weight: bf16(fl32(LUT · absmax)), activations rounded to bf16, double accumulation.
      std::vector<float> wq(nw);
      for (int64_t i = 0; i < nw; ++i) {
        const uint8_t byte = codes[i / 2];
        wq[i] = bf16ToF(toBf16(bitsToF((c.fp4 ? kFp4 : kNf4)[(i & 1) ? (byte & 15) : (byte >> 4)]) * absmax[i / c.bs]));
      }
      std::vector<float> x = randn(int64_t(c.m) * c.k), dy = randn(int64_t(c.m) * c.n);
      std::vector<uint16_t> xb(x.size()), dyb(dy.size());
      for (size_t i = 0; i < x.size(); ++i) { xb[i] = toBf16(x[i]); x[i] = bf16ToF(xb[i]); }
      for (size_t i = 0; i < dy.size(); ++i) { dyb[i] = toBf16(dy[i]); dy[i] = bf16ToF(dyb[i]); }
      Weight4bit W;
      W.codes = up(codes); W.n = c.n; W.k = c.k; W.blocksize = c.bs; W.fp4 = c.fp4;
      float *dAbs = nullptr, *dCode = nullptr, *dNested = nullptr;
      uint8_t* dQ = nullptr;
      if (c.nested) {
        W.absmax.qabsmax = dQ = up(qabs); W.absmax.code = dCode = up(code); W.absmax.nestedAbsmax = dNested = up(nested);
        W.absmax.offset = offset;
      } else {
        W.absmax.absmax = dAbs = up(absmax);
      }
      uint16_t* dx = up(xb);
      uint16_t* ddy = up(dyb);
      float* y = dalloc<float>(int64_t(c.m) * c.n);
      float* dxo = dalloc<float>(int64_t(c.m) * c.k);
      gemm4bit(S(), dx, BF16, c.m, W, y, F32);
      gemm4bitInputGrad(S(), ddy, BF16, c.m, W, dxo, F32);
      GemmArgs g;
      g.m = c.m; g.n = c.n; g.k = c.k; g.transB = true;
      const Cmp cf = compare(down(y, int64_t(c.m) * c.n), hostGemm(x, wq, g, 0, 0), 1e-5, 1e-4, 1e-5);
      GemmArgs gb;
      gb.m = c.m; gb.n = c.k; gb.k = c.n;
      const Cmp cb = compare(down(dxo, int64_t(c.m) * c.k), hostGemm(dy, wq, gb, 0, 0), 1e-5, 1e-4, 1e-5);
      reportCmp(std::string(name) + " forward", cf);
      reportCmp(std::string(name) + " input grad", cb);
      for (void* p : {(void*)W.codes, (void*)dAbs, (void*)dCode, (void*)dNested, (void*)dQ, (void*)dx, (void*)ddy, (void*)y, (void*)dxo})
        if (p) dfree(p);
    });
  }
}

// ------------------------------------------------------------------ validation: fused ops
static void checkFused() {
  std::printf("fused ops: rmsnorm, rope, swiglu, softmax, cross-entropy, embedding, adamw, attention\n");
  guarded("rmsnorm", [&] {
    const int rows = 33, dim = 4100;
    std::vector<float> x = randn(rows * dim), w = randn(dim), dy = randn(rows * dim);
    float *dx = up(x), *dw = up(w), *ddy = up(dy), *y = dalloc<float>(rows * dim), *rs = dalloc<float>(rows);
    float *gx = dalloc<float>(rows * dim), *gw = dalloc<float>(dim);
    rmsNorm(S(), dx, dw, rows, dim, 1e-5f, y, rs);
    rmsNormBackward(S(), ddy, dx, dw, rs, rows, dim, gx, gw);
    std::vector<double> wy(rows * dim), wgx(rows * dim), wgw(dim, 0.0);
    for (int r = 0; r < rows; ++r) {
      double ss = 0, dot = 0;
      for (int j = 0; j < dim; ++j) ss += double(x[r * dim + j]) * x[r * dim + j];
      const double rstd = 1 / std::sqrt(ss / dim + 1e-5);
      for (int j = 0; j < dim; ++j) { wy[r * dim + j] = x[r * dim + j] * rstd * w[j]; dot += double(dy[r * dim + j]) * w[j] * x[r * dim + j]; }
      for (int j = 0; j < dim; ++j) {
        wgx[r * dim + j] = rstd * w[j] * dy[r * dim + j] - x[r * dim + j] * rstd * rstd * rstd * dot / dim;
        wgw[j] += double(dy[r * dim + j]) * x[r * dim + j] * rstd;
      }
    }
    reportCmp("rmsnorm forward", compare(down(y, rows * dim), wy, 1e-6, 1e-4, 1e-5));
    reportCmp("rmsnorm backward dx", compare(down(gx, rows * dim), wgx, 1e-6, 1e-4, 1e-5));
    reportCmp("rmsnorm backward dweight", compare(down(gw, dim), wgw, 1e-6, 1e-4, 1e-5));
    for (void* p : {(void*)dx, (void*)dw, (void*)ddy, (void*)y, (void*)rs, (void*)gx, (void*)gw}) dfree(p);
  });
  guarded("rope", [&] {
    const int B = 2, Sq = 37, H = 3, D = 128;
    const float theta = 500000.f;
    std::vector<float> x = randn(B * Sq * H * D);
    std::vector<int32_t> pos(B * Sq);
    for (int i = 0; i < B * Sq; ++i) pos[i] = (i * 997) % 131072;
    float* dx = up(x);
    int32_t* dp = up(pos);
    float *y = dalloc<float>(x.size()), *back = dalloc<float>(x.size());
    rope(S(), dx, dp, B, Sq, H, D, theta, false, y);
    rope(S(), y, dp, B, Sq, H, D, theta, true, back);
    std::vector<double> w(x.size());
    for (int t = 0; t < B * Sq; ++t)
      for (int h = 0; h < H; ++h)
        for (int i = 0; i < D / 2; ++i) {
          const double ang = pos[t] * (1 / std::pow(double(theta), 2.0 * i / D));
          const int64_t base = (int64_t(t) * H + h) * D;
          w[base + i] = x[base + i] * std::cos(ang) - x[base + i + D / 2] * std::sin(ang);
          w[base + i + D / 2] = x[base + i + D / 2] * std::cos(ang) + x[base + i] * std::sin(ang);
        }
    reportCmp("rope forward (positions up to 131k)", compare(down(y, x.size()), w, 1e-5, 1e-4));
    reportCmp("rope inverse ∘ rope = identity", compare(down(back, x.size()), x, 1e-5, 1e-4));
    for (void* p : {(void*)dx, (void*)dp, (void*)y, (void*)back}) dfree(p);
  });
  guarded("swiglu", [&] {
    const int n = 100003;
    std::vector<float> g = randn(n, 3.f), u = randn(n), dy = randn(n);
    float *dg = up(g), *du = up(u), *ddy = up(dy), *y = dalloc<float>(n), *gg = dalloc<float>(n), *gu = dalloc<float>(n);
    swiglu(S(), dg, du, n, y);
    swigluBackward(S(), ddy, dg, du, n, gg, gu);
    std::vector<double> wy(n), wg(n), wu(n);
    for (int i = 0; i < n; ++i) {
      const double s = 1 / (1 + std::exp(-double(g[i])));
      wy[i] = g[i] * s * u[i];
      wu[i] = dy[i] * g[i] * s;
      wg[i] = dy[i] * u[i] * (s + g[i] * s * (1 - s));
    }
    reportCmp("swiglu forward", compare(down(y, n), wy, 1e-6, 1e-5));
    reportCmp("swiglu backward dgate", compare(down(gg, n), wg, 1e-6, 1e-5));
    reportCmp("swiglu backward dup", compare(down(gu, n), wu, 1e-6, 1e-5));
    for (void* p : {(void*)dg, (void*)du, (void*)ddy, (void*)y, (void*)gg, (void*)gu}) dfree(p);
  });
  guarded("softmax", [&] {
    const int rows = 19, n = 3001;
    std::vector<float> x = randn(rows * n, 4.f), dy = randn(rows * n);
    float *dx = up(x), *ddy = up(dy), *y = dalloc<float>(rows * n), *g = dalloc<float>(rows * n);
    softmax(S(), dx, rows, n, y);
    softmaxBackward(S(), ddy, y, rows, n, g);
    std::vector<double> wy(rows * n), wg(rows * n);
    for (int r = 0; r < rows; ++r) {
      double m = -INFINITY, s = 0, dot = 0;
      for (int j = 0; j < n; ++j) m = std::max(m, double(x[r * n + j]));
      for (int j = 0; j < n; ++j) s += std::exp(x[r * n + j] - m);
      for (int j = 0; j < n; ++j) { wy[r * n + j] = std::exp(x[r * n + j] - m) / s; dot += dy[r * n + j] * wy[r * n + j]; }
      for (int j = 0; j < n; ++j) wg[r * n + j] = wy[r * n + j] * (dy[r * n + j] - dot);
    }
    reportCmp("softmax forward", compare(down(y, rows * n), wy, 1e-7, 1e-4, 1e-5));
    reportCmp("softmax backward", compare(down(g, rows * n), wg, 1e-7, 1e-4, 1e-5));
    for (void* p : {(void*)dx, (void*)ddy, (void*)y, (void*)g}) dfree(p);
  });
  guarded("cross-entropy", [&] {
    const int rows = 9, V = 128256;  // Llama-3 vocabulary
    std::vector<float> x = randn(int64_t(rows) * V, 3.f), dl = randu(rows, 0.1f, 1.f);
    std::vector<int32_t> lab(rows);
    for (int r = 0; r < rows; ++r) lab[r] = r == 4 ? -100 : int32_t(gRng() % V);
    float *dx = up(x), *ddl = up(dl), *loss = dalloc<float>(rows), *lse = dalloc<float>(rows), *g = dalloc<float>(int64_t(rows) * V);
    int32_t* dlab = up(lab);
    crossEntropy(S(), dx, dlab, rows, V, -100, loss, lse);
    crossEntropyBackward(S(), ddl, dx, dlab, lse, rows, V, -100, g);
    std::vector<double> wl(rows), wlse(rows), wg(int64_t(rows) * V);
    for (int r = 0; r < rows; ++r) {
      double m = -INFINITY, s = 0;
      for (int j = 0; j < V; ++j) m = std::max(m, double(x[int64_t(r) * V + j]));
      for (int j = 0; j < V; ++j) s += std::exp(x[int64_t(r) * V + j] - m);
      wlse[r] = m + std::log(s);
      wl[r] = lab[r] == -100 ? 0 : wlse[r] - x[int64_t(r) * V + lab[r]];
      for (int j = 0; j < V; ++j)
        wg[int64_t(r) * V + j] = lab[r] == -100 ? 0 : dl[r] * (std::exp(x[int64_t(r) * V + j] - wlse[r]) - (j == lab[r] ? 1 : 0));
    }
    reportCmp("cross-entropy loss (vocab 128256, ignore_index row)", compare(down(loss, rows), wl, 1e-5, 1e-5));
    reportCmp("cross-entropy lse", compare(down(lse, rows), wlse, 1e-5, 1e-5));
    reportCmp("cross-entropy backward", compare(down(g, int64_t(rows) * V), wg, 1e-7, 1e-4, 1e-5));
    for (void* p : {(void*)dx, (void*)ddl, (void*)loss, (void*)lse, (void*)g, (void*)dlab}) dfree(p);
  });
  guarded("embedding", [&] {
    const int V = 1000, D = 96, N = 517;
    std::vector<float> w = randn(V * D), dy = randn(N * D);
    std::vector<int32_t> ids(N);
    for (int i = 0; i < N; ++i) ids[i] = int32_t(gRng() % 50);  // many repeats: exercises the scatter-add
    float *dw = up(w), *ddy = up(dy), *out = dalloc<float>(N * D), *gw = dalloc<float>(V * D);
    int32_t* did = up(ids);
    embedding(S(), dw, did, N, D, V, out);
    embeddingBackward(S(), ddy, did, N, D, V, gw);
    std::vector<double> wo(N * D), wg(V * D, 0.0);
    for (int i = 0; i < N; ++i)
      for (int d = 0; d < D; ++d) { wo[i * D + d] = w[ids[i] * D + d]; wg[ids[i] * D + d] += dy[i * D + d]; }
    reportCmp("embedding gather (exact)", compare(down(out, N * D), wo, 0, 0));
    reportCmp("embedding backward scatter-add", compare(down(gw, V * D), wg, 1e-6, 1e-5, 1e-6));
    for (void* p : {(void*)dw, (void*)ddy, (void*)out, (void*)gw, (void*)did}) dfree(p);
  });
  guarded("adamw32", [&] {
    const int n = 300007;
    std::vector<float> p = randn(n), g = randn(n), m = randn(n, 0.1f), v = randu(n, 0.f, 0.1f);
    float *dp = up(p), *dg = up(g), *dm = up(m), *dv = up(v);
    const AdamW o{1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 7};
    adamw32(S(), dp, dg, dm, dv, n, o);
    std::vector<double> wp(n), wm(n), wv(n);
    const double bc1 = 1 - std::pow(0.9, 7), bc2 = 1 - std::pow(0.999, 7);
    for (int i = 0; i < n; ++i) {
      double pp = p[i] * (1 - 1e-3 * 0.01);
      wm[i] = 0.9 * m[i] + 0.1 * g[i];
      wv[i] = 0.999 * v[i] + 0.001 * double(g[i]) * g[i];
      wp[i] = pp - (1e-3 / bc1) * wm[i] / (std::sqrt(wv[i]) / std::sqrt(bc2) + 1e-8);
    }
    reportCmp("adamw32 param", compare(down(dp, n), wp, 1e-6, 1e-5));
    reportCmp("adamw32 m", compare(down(dm, n), wm, 1e-7, 1e-5));
    reportCmp("adamw32 v", compare(down(dv, n), wv, 1e-9, 1e-5));
    for (void* q : {(void*)dp, (void*)dg, (void*)dm, (void*)dv}) dfree(q);
  });
  guarded("adamw8bit", [&] {
    const int n = 256 * 50 + 77, nb = (n + 255) / 256;
    const std::vector<float> q1 = mapOf(kSignedMapBits), q2 = mapOf(kUnsignedMapBits);
    std::vector<float> p = randn(n), g = randn(n, 0.01f), a1 = randu(nb, 0.001f, 0.01f), a2 = randu(nb, 1e-6f, 1e-4f);
    std::vector<uint8_t> s1(n), s2(n);
    for (int i = 0; i < n; ++i) { s1[i] = uint8_t(gRng()); s2[i] = uint8_t(gRng()); }
    g[10] = NAN;
    float *dp = up(p), *dg = up(g), *da1 = up(a1), *da2 = up(a2), *dq1 = up(q1), *dq2 = up(q2);
    uint8_t *ds1 = up(s1), *ds2 = up(s2);
    const AdamW o{1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 5};
    adamw8bit(S(), dp, dg, ds1, ds2, da1, da2, dq1, dq2, n, o);
    // CPU port of spec §8.4 in float (the kernel's own arithmetic order)
    const double c1 = 1 - std::pow(0.9, 5), c2 = std::sqrt(1 - std::pow(0.999, 5));
    const float stepSize = float(-1e-3 * c2 / c1), decay = float(1 - 1e-3 * 0.01);
    std::vector<float> wp = p, wa1(nb), wa2(nb);
    std::vector<uint8_t> w1(n), w2(n);
    for (int b = 0; b < nb; ++b) {
      const int lo = b * 256, hi = std::min(n, lo + 256);
      std::vector<float> m(256, 0.f), v(256, 0.f);
      float mx1 = 0, mx2 = 0;
      for (int i = lo; i < hi; ++i) {
        if (!std::isfinite(g[i])) continue;
        v[i - lo] = q2[s2[i]] * a2[b] * 0.999f + (1.0f - 0.999f) * g[i] * g[i];
        m[i - lo] = q1[s1[i]] * a1[b] * 0.9f + (1.0f - 0.9f) * g[i];
        mx1 = std::fmax(mx1, std::fabs(m[i - lo]));
        mx2 = std::fmax(mx2, std::fabs(v[i - lo]));
      }
      wa1[b] = mx1; wa2[b] = mx2;
      for (int i = lo; i < hi; ++i) {
        const float mm = m[i - lo], vv = v[i - lo];
        if (std::isfinite(g[i])) wp[i] = (p[i] + stepSize * (mm / (std::sqrt(vv) + float(c2) * 1e-8f))) * decay;
        uint8_t c = hQuant8(q1.data(), mx1 > 0 ? mm / mx1 : 0.f);
        if (std::signbit(q1[c]) != std::signbit(mm)) c = uint8_t(mm > 0 ? std::min(c + 1, 255) : std::max(c - 1, 0));
        w1[i] = c;
        w2[i] = hQuant8(q2.data(), mx2 > 0 ? vv / mx2 : 0.f);
      }
    }
    reportCmp("adamw8bit param (NaN grad element untouched)", compare(down(dp, n), wp, 1e-7, 1e-5));
    reportCmp("adamw8bit absmax1/absmax2", compare(down(da1, nb), wa1, 0, 1e-5));
    reportCmp("adamw8bit absmax2", compare(down(da2, nb), wa2, 0, 1e-5));
    // States: the CPU port uses the same float ops; allow ±1 code where FMA contraction differs.
    const std::vector<uint8_t> g1 = down(ds1, n), g2 = down(ds2, n);
    int off = 0;
    for (int i = 0; i < n; ++i) off += std::abs(int(g1[i]) - int(w1[i])) > 1 || std::abs(int(g2[i]) - int(w2[i])) > 1;
    report("adamw8bit requantized states within ±1 code", off == 0, std::to_string(off) + " elements off");
    for (void* q : {(void*)dp, (void*)dg, (void*)da1, (void*)da2, (void*)dq1, (void*)dq2, (void*)ds1, (void*)ds2}) dfree(q);
  });
  for (bool segments : {false, true}) {
    const std::string name = std::string("attention fwd/bwd GQA 8/2 heads, d=128, seq 77") + (segments ? ", packed segments" : "");
    guarded(name, [&] {
      AttentionArgs a;
      a.batch = 2; a.heads = 8; a.kvHeads = 2; a.seq = 77; a.headDim = 128; a.scale = 1.f / std::sqrt(128.f);
      const int B = a.batch, H = a.heads, KH = a.kvHeads, Sq = a.seq, D = a.headDim, G = H / KH;
      std::vector<float> q = randn(B * H * Sq * D), k = randn(B * KH * Sq * D), v = randn(B * KH * Sq * D), dout = randn(B * H * Sq * D);
      std::vector<int32_t> seg(B * Sq);
      for (int i = 0; i < B * Sq; ++i) seg[i] = segments ? (i % Sq) / 30 : 0;
      float *dq = up(q), *dk = up(k), *dv = up(v), *ddo = up(dout);
      int32_t* dseg = up(seg);
      if (segments) a.segmentIds = dseg;
      float *out = dalloc<float>(q.size()), *lse = dalloc<float>(B * H * Sq), *gq = dalloc<float>(q.size());
      float *gk = dalloc<float>(k.size()), *gv = dalloc<float>(v.size()), *scratch = dalloc<float>(B * H * Sq);
      attentionForward(S(), a, dq, dk, dv, out, lse);
      attentionBackward(S(), a, ddo, dq, dk, dv, out, lse, gq, gk, gv, scratch);
      std::vector<double> wo(q.size()), wl(B * H * Sq), wq(q.size(), 0.0), wk(k.size(), 0.0), wv(v.size(), 0.0);
      std::vector<double> P(Sq);
      for (int b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h) {
          const int kh = h / G;
          const float* Q = &q[((b * H + h) * Sq) * D];
          const float* K = &k[((b * KH + kh) * Sq) * D];
          const float* Vv = &v[((b * KH + kh) * Sq) * D];
          const float* dO = &dout[((b * H + h) * Sq) * D];
          for (int i = 0; i < Sq; ++i) {
            double m = -INFINITY;
            for (int j = 0; j < Sq; ++j) {
              const bool ok = j <= i && seg[b * Sq + j] == seg[b * Sq + i];
              double s = -INFINITY;
              if (ok) { s = 0; for (int d = 0; d < D; ++d) s += double(Q[i * D + d]) * K[j * D + d]; s *= a.scale; }
              P[j] = s;
              m = std::max(m, s);
            }
            double l = 0;
            for (int j = 0; j < Sq; ++j) { P[j] = std::exp(P[j] - m); l += P[j]; }
            for (int j = 0; j < Sq; ++j) P[j] /= l;
            const int64_t row = (int64_t(b) * H + h) * Sq + i;
            wl[row] = m + std::log(l);
            double delta = 0;
            for (int d = 0; d < D; ++d) {
              double o = 0;
              for (int j = 0; j < Sq; ++j) o += P[j] * Vv[j * D + d];
              wo[row * D + d] = o;
              delta += o * dO[i * D + d];
            }
            for (int j = 0; j < Sq; ++j) {
              if (P[j] == 0) continue;
              double dp = 0;
              for (int d = 0; d < D; ++d) dp += double(dO[i * D + d]) * Vv[j * D + d];
              const double ds = P[j] * (dp - delta);
              const int64_t kvRow = (int64_t(b) * KH + kh) * Sq + j;
              for (int d = 0; d < D; ++d) {
                wq[row * D + d] += a.scale * ds * K[j * D + d];
                wk[kvRow * D + d] += a.scale * ds * Q[i * D + d];
                wv[kvRow * D + d] += P[j] * dO[i * D + d];
              }
            }
          }
        }
      reportCmp(name + " out", compare(down(out, q.size()), wo, 1e-6, 1e-4, 1e-5));
      reportCmp(name + " lse", compare(down(lse, B * H * Sq), wl, 1e-6, 1e-4, 1e-5));
      reportCmp(name + " dq", compare(down(gq, q.size()), wq, 1e-6, 1e-4, 1e-5));
      reportCmp(name + " dk", compare(down(gk, k.size()), wk, 1e-6, 1e-4, 1e-5));
      reportCmp(name + " dv", compare(down(gv, v.size()), wv, 1e-6, 1e-4, 1e-5));
      for (void* p : {(void*)dq, (void*)dk, (void*)dv, (void*)ddo, (void*)dseg, (void*)out, (void*)lse, (void*)gq, (void*)gk, (void*)gv, (void*)scratch}) dfree(p);
    });
  }
  guarded("allocator", [&] {
    void* warm = rt().allocate(3 << 20);
    rt().release(warm);
    const size_t calls = rt().stats().allocCalls;
    for (int i = 0; i < 1000; ++i) rt().release(rt().allocate((3 << 20) - i));
    const MemoryStats s = rt().stats();
    report("caching allocator: 1000 alloc/free cycles, no new cudaMalloc", s.allocCalls == calls,
           "reserved " + std::to_string(s.reservedBytes >> 20) + " MiB, peak " + std::to_string(s.peakBytes >> 20) + " MiB");
    void* m = rt().allocateManaged(1 << 22);
    rt().prefetchToDevice(m, 1 << 22);
    fill(S(), m, F32, 1 << 20, 1.0);
    QK_CHECK(cudaStreamSynchronize(S()));
    const float first = static_cast<float*>(m)[12345];  // managed memory is host-readable
    rt().releaseManaged(m);
    report("managed (paged) memory: prefetch + kernel + host read", first == 1.0f);
  });
}

// ------------------------------------------------------------------ benchmarks

/** NF4 weight [n, k] with double quant, random codes (benchmarks only read it). */
struct Nf4Weight {
  Weight4bit w;
  std::vector<void*> owned;
  Nf4Weight(int n, int k) {
    const int64_t count = int64_t(n) * k, nb = count / 64;
    std::vector<uint8_t> codes(count / 2), q(nb);
    for (auto& c : codes) c = uint8_t(gRng());
    for (auto& c : q) c = uint8_t(gRng());
    std::vector<float> nested((nb + 255) / 256, 0.02f);
    w.codes = up(codes); w.n = n; w.k = k; w.blocksize = 64;
    w.absmax.qabsmax = up(q); w.absmax.code = up(mapOf(kSignedMapBits)); w.absmax.nestedAbsmax = up(nested);
    w.absmax.offset = 0.03f;
    owned = {(void*)w.codes, (void*)w.absmax.qabsmax, (void*)w.absmax.code, (void*)w.absmax.nestedAbsmax};
  }
  ~Nf4Weight() { for (void* p : owned) dfree(p); }
};
static uint16_t* randBf16(int64_t n, float scale = 0.02f) {
  std::vector<uint16_t> h(n);
  std::normal_distribution<float> d(0.f, scale);
  for (auto& x : h) x = toBf16(d(gRng));
  return up(h);
}

static void benchCopyAndDequant(double& copyGBs) {
  Timer t;
  const size_t bytes = size_t(1) << 30;
  void* a = rt().allocate(bytes);
  void* b = rt().allocate(bytes);
  const double ms = t.median(10, [&] { QK_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, S())); });
  copyGBs = 2.0 * bytes / (ms * 1e-3) / 1e9;  // read + write
  gTable.push_back({"device-to-device copy 1 GiB", fmt("%.0f GB/s", copyGBs), "-", "-", "read+write bytes"});
  dfree(a); dfree(b);
  for (int rows : {4096, 14336}) {
    Nf4Weight w(rows, 4096);
    const int64_t n = int64_t(rows) * 4096;
    uint16_t* out = dalloc<uint16_t>(n);
    const double dms = t.median(20, [&] { dequantize4bit(S(), w.w.codes, n, 64, false, w.w.absmax, out, BF16); });
    const double moved = n / 2.0 + n / 64.0 + 2.0 * n;  // packed codes + qabsmax + bf16 out
    const double gbs = moved / (dms * 1e-3) / 1e9;
    gTable.push_back({"NF4+DQ dequant → bf16 " + std::to_string(rows) + "x4096", fmt("%.0f GB/s", gbs), fmt("%.0f GB/s copy", copyGBs),
                      fmt("%.0f%%", 100 * gbs / copyGBs), fmt("%.3f ms; target ≥ 80%%", dms)});
    dfree(out);
  }
}

static void benchGemm() {
  Timer t;
  struct Shape { int m, n, k; };
  for (Shape s : {Shape{4096, 4096, 4096}, Shape{4096, 4096, 14336}}) {
    const double flop = 2.0 * s.m * s.n * s.k;
    Nf4Weight w(s.n, s.k);
    uint16_t* x = randBf16(int64_t(s.m) * s.k);
    uint16_t* wb = randBf16(int64_t(s.n) * s.k);
    uint16_t* yb = dalloc<uint16_t>(int64_t(s.m) * s.n);
    float* y = dalloc<float>(int64_t(s.m) * s.n);
    const double ours = t.median(5, [&] { gemm4bit(S(), x, BF16, s.m, w.w, yb, BF16); });
    GemmArgs g;
    g.m = s.m; g.n = s.n; g.k = s.k; g.transB = true; g.dtype = BF16;
    const double dense = t.median(5, [&] { gemm(S(), g, x, wb, y, 0); });
    const std::string shape = "(" + std::to_string(s.m) + "," + std::to_string(s.n) + "," + std::to_string(s.k) + ")";
    const double oursT = flop / (ours * 1e-3) / 1e12;
    if (cublasStatus().loaded) {
      const double cb = t.median(5, [&] { gemm(S(), g, x, wb, y, 1); });
      const double cbT = flop / (cb * 1e-3) / 1e12;
      gTable.push_back({"fused NF4 GEMM m,n,k=" + shape, fmt("%.0f TFLOP/s", oursT), fmt("cuBLAS bf16 %.0f TFLOP/s", cbT),
                        fmt("%.2f", oursT / cbT), fmt("%.2f ms", ours)});
    } else {
      gTable.push_back({"fused NF4 GEMM m,n,k=" + shape, fmt("%.0f TFLOP/s", oursT), "cuBLAS absent", "-", fmt("%.2f ms", ours)});
    }
    const double denseT = flop / (dense * 1e-3) / 1e12;
    gTable.push_back({"own bf16 TC GEMM m,n,k=" + shape, fmt("%.0f TFLOP/s", denseT), "-", "-", fmt("%.2f ms", dense)});
    const double gemv = t.median(20, [&] { gemm4bit(S(), x, BF16, 1, w.w, yb, BF16); });
    const double gemvBytes = double(s.n) * s.k * (0.5 + 1.0 / 64);
    gTable.push_back({"NF4 GEMV m=1 n,k=(" + std::to_string(s.n) + "," + std::to_string(s.k) + ")", fmt("%.0f GB/s", gemvBytes / (gemv * 1e-3) / 1e9),
                      "-", "-", fmt("%.3f ms", gemv)});
    dfree(x); dfree(wb); dfree(yb); dfree(y);
  }
}

// One Llama-3-8B-shaped decoder layer, forward + backward (input grads through the frozen weights,
// LoRA r=16 weight grads on all 7 linears), f32 activations, bf16 GEMM inputs.
namespace layer {

constexpr int kR = 16;

static void toBf16Dev(const float* x, uint16_t* y, int64_t n) {
  View v;
  v.rank = 1; v.shape[0] = n; v.strides[0] = 1;
  copyStrided(S(), x, F32, v, y, BF16);
}
static void addInto(float* y, const float* x, int64_t n) {  // y += x
  View v;
  v.rank = 1; v.shape[0] = n; v.strides[0] = 1;
  binary(S(), B_ADD, y, v, x, v, y);
}
static void gemmBf16(const uint16_t* A, const uint16_t* B, float* C, int m, int n, int k, bool ta, bool tb, int useCublas) {
  GemmArgs g;
  g.m = m; g.n = n; g.k = k; g.transA = ta; g.transB = tb; g.dtype = BF16;
  gemm(S(), g, A, B, C, useCublas);
}
/** [T, heads, D] token-major ↔ [heads, T, D] head-major, with an optional cast. */
static void permute(const void* src, int srcDtype, void* dst, int dstDtype, int T, int heads, int D, bool toHeadMajor) {
  View v;
  v.rank = 3;
  if (toHeadMajor) { v.shape[0] = heads; v.shape[1] = T; v.shape[2] = D; v.strides[0] = D; v.strides[1] = int64_t(heads) * D; v.strides[2] = 1; }
  else { v.shape[0] = T; v.shape[1] = heads; v.shape[2] = D; v.strides[0] = D; v.strides[1] = int64_t(T) * D; v.strides[2] = 1; }
  copyStrided(S(), src, srcDtype, v, dst, dstDtype);
}

struct Linear {
  int in, out, T, useCublas;
  Nf4Weight* q = nullptr;
  uint16_t* wb = nullptr;
  uint16_t *A, *B;   // LoRA A [r, in], B [out, r]
  float *t, *u;      // scratch
  uint16_t* tb;      // saved for backward: x·Aᵀ in bf16
  float *gt, *dA, *dB, *tmp;
  uint16_t* gtb;
  Linear(int in_, int out_, int T_, bool nf4, int useCublas_) : in(in_), out(out_), T(T_), useCublas(useCublas_) {
    if (nf4) q = new Nf4Weight(out, in);
    else wb = randBf16(int64_t(out) * in);
    A = randBf16(int64_t(kR) * in);
    B = randBf16(int64_t(out) * kR);
    t = dalloc<float>(int64_t(T) * kR); tb = dalloc<uint16_t>(int64_t(T) * kR); u = dalloc<float>(int64_t(T) * out);
    gt = dalloc<float>(int64_t(T) * kR); gtb = dalloc<uint16_t>(int64_t(T) * kR);
    dA = dalloc<float>(int64_t(kR) * in); dB = dalloc<float>(int64_t(out) * kR); tmp = dalloc<float>(int64_t(T) * in);
  }
  ~Linear() {
    delete q;
    for (void* p : {(void*)wb, (void*)A, (void*)B, (void*)t, (void*)tb, (void*)u, (void*)gt, (void*)gtb, (void*)dA, (void*)dB, (void*)tmp})
      if (p) dfree(p);
  }
  // "own kernels" (useCublas 0): the fused kernel (legacy under QLORA_CUDA_GEMM=legacy); else the auto selection.
  int path4bit() const { return useCublas != 0 ? GEMM4BIT_AUTO : legacyGemmFromEnv() ? GEMM4BIT_LEGACY : GEMM4BIT_FUSED; }
  void forward(const uint16_t* xb, float* y) {
    if (q) gemm4bit(S(), xb, BF16, T, q->w, y, F32, path4bit());
    else gemmBf16(xb, wb, y, T, out, in, false, true, useCublas);
    gemmBf16(xb, A, t, T, kR, in, false, true, useCublas);
    toBf16Dev(t, tb, int64_t(T) * kR);
    if (fusedLora()) {
      loraAccumulate(S(), tb, B, BF16, true, T, out, kR, 1.f, y);  // y += t·Bᵀ, y touched once
    } else {
      gemmBf16(tb, B, u, T, out, kR, false, true, useCublas);
      addInto(y, u, int64_t(T) * out);
    }
  }
  void backward(const uint16_t* dyb, const uint16_t* xb, float* dx) {
    if (q) gemm4bitInputGrad(S(), dyb, BF16, T, q->w, dx, F32, path4bit());
    else gemmBf16(dyb, wb, dx, T, in, out, false, false, useCublas);
    gemmBf16(dyb, B, gt, T, kR, out, false, false, useCublas);       // dy·B        [T, r]
    toBf16Dev(gt, gtb, int64_t(T) * kR);
    gemmBf16(dyb, tb, dB, out, kR, T, true, false, useCublas);       // dyᵀ·t      [out, r]
    gemmBf16(gtb, xb, dA, kR, in, T, true, false, useCublas);        // (dy·B)ᵀ·x  [r, in]
    if (fusedLora()) {
      loraAccumulate(S(), gtb, A, BF16, false, T, in, kR, 1.f, dx);  // dx += (dy·B)·A, A [r, in]
    } else {
      gemmBf16(gtb, A, tmp, T, in, kR, false, false, useCublas);     // (dy·B)·A   [T, in]
      addInto(dx, tmp, int64_t(T) * in);
    }
  }
  /** LoRA's rank-r up-projections fused into the output (lora.cu); QLORA_GPU_CHECK_LORA=unfused: GEMM + add. */
  static bool fusedLora() {
    static const bool fused = [] {
      const char* e = std::getenv("QLORA_GPU_CHECK_LORA");
      return !(e && std::string(e) == "unfused");
    }();
    return fused;
  }
};

struct Layer {
  static constexpr int H = 4096, NH = 32, NKV = 8, D = 128, F = 14336;
  int T;
  Linear *lq, *lk, *lv, *lo, *lg, *lu, *ld;
  std::vector<void*> bufs;
  template <class X>
  X* buf(int64_t n) { X* p = dalloc<X>(n); bufs.push_back(p); return p; }
  float *x, *w1, *w2, *h1, *r1, *q, *k, *v, *qh, *kh, *vh, *ao, *lse, *o, *x2, *h2, *r2, *g, *u, *act, *d, *outp;
  float *dout, *dact, *dg, *du, *dh2, *dh2b, *dx2, *dx2n, *dw, *dao, *daoh, *dqh, *dkh, *dvh, *dq, *dk, *dv, *dh1, *dtmp, *dx, *scratch;
  uint16_t *h1b, *aob, *h2b, *actb, *ddb, *dgb, *dub, *dx2b, *dqb, *dkb, *dvb;
  int32_t* pos;
  Layer(int T_, bool nf4, int useCublas) : T(T_) {
    lq = new Linear(H, NH * D, T, nf4, useCublas); lk = new Linear(H, NKV * D, T, nf4, useCublas);
    lv = new Linear(H, NKV * D, T, nf4, useCublas); lo = new Linear(NH * D, H, T, nf4, useCublas);
    lg = new Linear(H, F, T, nf4, useCublas); lu = new Linear(H, F, T, nf4, useCublas); ld = new Linear(F, H, T, nf4, useCublas);
    const int64_t TH = int64_t(T) * H, TQ = int64_t(T) * NH * D, TK = int64_t(T) * NKV * D, TF = int64_t(T) * F;
    x = up(randn(TH)); bufs.push_back(x);
    dout = up(randn(TH, 1e-3f)); bufs.push_back(dout);
    w1 = up(randu(H, 0.5f, 1.5f)); bufs.push_back(w1);
    w2 = up(randu(H, 0.5f, 1.5f)); bufs.push_back(w2);
    std::vector<int32_t> p(T);
    for (int i = 0; i < T; ++i) p[i] = i;
    pos = up(p); bufs.push_back(pos);
    h1 = buf<float>(TH); r1 = buf<float>(T); h1b = buf<uint16_t>(TH);
    q = buf<float>(TQ); k = buf<float>(TK); v = buf<float>(TK); qh = buf<float>(TQ); kh = buf<float>(TK); vh = buf<float>(TK);
    ao = buf<float>(TQ); lse = buf<float>(int64_t(NH) * T); aob = buf<uint16_t>(TQ); o = buf<float>(TH); x2 = buf<float>(TH);
    h2 = buf<float>(TH); r2 = buf<float>(T); h2b = buf<uint16_t>(TH); g = buf<float>(TF); u = buf<float>(TF); act = buf<float>(TF);
    actb = buf<uint16_t>(TF); d = buf<float>(TH); outp = buf<float>(TH);
    ddb = buf<uint16_t>(TH); dact = buf<float>(TF); dg = buf<float>(TF); du = buf<float>(TF); dgb = buf<uint16_t>(TF); dub = buf<uint16_t>(TF);
    dh2 = buf<float>(TH); dh2b = buf<float>(TH); dx2 = buf<float>(TH); dx2n = buf<float>(TH); dw = buf<float>(H); dx2b = buf<uint16_t>(TH);
    dao = buf<float>(TQ); daoh = buf<float>(TQ); dqh = buf<float>(TQ); dkh = buf<float>(TK); dvh = buf<float>(TK);
    dq = buf<float>(TQ); dk = buf<float>(TK); dv = buf<float>(TK); dqb = buf<uint16_t>(TQ); dkb = buf<uint16_t>(TK); dvb = buf<uint16_t>(TK);
    dh1 = buf<float>(TH); dtmp = buf<float>(TH); dx = buf<float>(TH); scratch = buf<float>(int64_t(NH) * T);
  }
  ~Layer() {
    for (Linear* l : {lq, lk, lv, lo, lg, lu, ld}) delete l;
    for (void* p : bufs) dfree(p);
  }
  AttentionArgs attn() const {
    AttentionArgs a;
    a.batch = 1; a.heads = NH; a.kvHeads = NKV; a.seq = T; a.headDim = D; a.scale = 1.f / std::sqrt(float(D));
    return a;
  }
  void* attnScratch = nullptr;  // TC attention: delta, split dK/dV partials, bf16 copies of the f32 inputs
  void* tcScratch() {
    if (!attnScratch)
      attnScratch = buf<char>(int64_t(std::max(attentionTcScratchBytes(attn(), false, F32), attentionTcScratchBytes(attn(), true, F32))));
    return attnScratch;
  }
  void forward() {
    const int64_t TH = int64_t(T) * H;
    rmsNorm(S(), x, w1, T, H, 1e-5f, h1, r1);
    toBf16Dev(h1, h1b, TH);
    lq->forward(h1b, q); lk->forward(h1b, k); lv->forward(h1b, v);
    rope(S(), q, pos, 1, T, NH, D, 500000.f, false, qh);  // qh used as temporary
    permute(qh, F32, q, F32, T, NH, D, true);             // q now head-major (roped)
    rope(S(), k, pos, 1, T, NKV, D, 500000.f, false, kh);
    permute(kh, F32, k, F32, T, NKV, D, true);
    permute(v, F32, vh, F32, T, NKV, D, true);
    std::swap(q, qh); std::swap(k, kh);                    // qh/kh: head-major roped q/k
    // bf16 tensor-core attention (f32 buffers rounded on device); QLORA_CUDA_ATTENTION=simt selects the SIMT kernel.
    if (attentionUseTc(attn(), true)) attentionForwardTc(S(), attn(), F32, qh, kh, vh, F32, ao, lse, tcScratch());
    else attentionForward(S(), attn(), qh, kh, vh, ao, lse);
    permute(ao, F32, aob, BF16, T, NH, D, false);
    lo->forward(aob, o);
    binary(S(), B_ADD, x, flat(TH), o, flat(TH), x2);
    rmsNorm(S(), x2, w2, T, H, 1e-5f, h2, r2);
    toBf16Dev(h2, h2b, TH);
    lg->forward(h2b, g); lu->forward(h2b, u);
    swiglu(S(), g, u, int64_t(T) * F, act);
    toBf16Dev(act, actb, int64_t(T) * F);
    ld->forward(actb, d);
    binary(S(), B_ADD, x2, flat(TH), d, flat(TH), outp);
  }
  static View flat(int64_t n) { View v; v.rank = 1; v.shape[0] = n; v.strides[0] = 1; return v; }
  void backward() {
    const int64_t TH = int64_t(T) * H, TF = int64_t(T) * F;
    toBf16Dev(dout, ddb, TH);
    ld->backward(ddb, actb, dact);
    swigluBackward(S(), dact, g, u, TF, dg, du);
    toBf16Dev(dg, dgb, TF); toBf16Dev(du, dub, TF);
    lg->backward(dgb, h2b, dh2); lu->backward(dub, h2b, dh2b);
    addInto(dh2, dh2b, TH);
    rmsNormBackward(S(), dh2, x2, w2, r2, T, H, dx2n, dw);
    binary(S(), B_ADD, dout, flat(TH), dx2n, flat(TH), dx2);  // residual
    toBf16Dev(dx2, dx2b, TH);
    lo->backward(dx2b, aob, dao);
    permute(dao, F32, daoh, F32, T, NH, D, true);
    if (attentionUseTc(attn(), true)) attentionBackwardTc(S(), attn(), F32, daoh, qh, kh, vh, F32, ao, lse, F32, dqh, dkh, dvh, tcScratch());
    else attentionBackward(S(), attn(), daoh, qh, kh, vh, ao, lse, dqh, dkh, dvh, scratch);
    permute(dqh, F32, dq, F32, T, NH, D, false);
    permute(dkh, F32, dk, F32, T, NKV, D, false);
    permute(dvh, F32, dv, F32, T, NKV, D, false);
    rope(S(), dq, pos, 1, T, NH, D, 500000.f, true, dao);  // inverse rope; dao reused as output
    rope(S(), dk, pos, 1, T, NKV, D, 500000.f, true, dkh);
    toBf16Dev(dao, dqb, int64_t(T) * NH * D); toBf16Dev(dkh, dkb, int64_t(T) * NKV * D); toBf16Dev(dv, dvb, int64_t(T) * NKV * D);
    lq->backward(dqb, h1b, dh1);
    lk->backward(dkb, h1b, dtmp); addInto(dh1, dtmp, TH);
    lv->backward(dvb, h1b, dtmp); addInto(dh1, dtmp, TH);
    rmsNormBackward(S(), dh1, x, w1, r1, T, H, dtmp, dw);
    binary(S(), B_ADD, dx2, flat(TH), dtmp, flat(TH), dx);
  }
};

static double peakBf16(const std::string& name) {
  if (name.find("H100") != std::string::npos || name.find("H200") != std::string::npos || name.find("H800") != std::string::npos ||
      name.find("GH200") != std::string::npos)
    return 989.4e12;  // dense bf16, SXM
  if (name.find("A100") != std::string::npos || name.find("A800") != std::string::npos) return 312e12;
  if (name.find("L40S") != std::string::npos) return 362e12;
  return 0;
}

static void bench(const std::string& deviceName) {
  Timer t;
  const int T = 2048;
  const double N = 4096.0 * (4096 + 1024 + 1024 + 4096) + 3.0 * 4096 * 14336;  // frozen params of the layer
  const double peak = peakBf16(deviceName);
  double msNf4 = 0, msBf16 = 0;
  struct Variant { const char* what; bool nf4; int cublas; double* out; };
  double msCublas = 0, msNf4Cublas = 0;
  const Variant variants[] = {{"decoder layer fwd+bwd NF4 frozen (own kernels)", true, 0, &msNf4},
                              {"decoder layer fwd+bwd bf16 frozen (own kernels)", false, 0, &msBf16},
                              {"decoder layer fwd+bwd NF4 frozen (auto: dequant panels + cuBLAS)", true, 1, &msNf4Cublas},
                              {"decoder layer fwd+bwd bf16 frozen (cuBLAS GEMMs)", false, 1, &msCublas}};
  for (const Variant& var : variants) {
    if (var.cublas == 1 && !cublasStatus().loaded) continue;
    guarded(var.what, [&] {
      Layer L(T, var.nf4, var.cublas);
      *var.out = t.median(3, [&] { L.forward(); L.backward(); });
      const double tokS = T / (*var.out * 1e-3);
      const double mfu = peak > 0 ? 4 * N * tokS / peak : 0;
      gTable.push_back({var.what, fmt("%.0f tok/s", tokS), fmt("%.1f ms", *var.out), "-",
                        peak > 0 ? fmt("MFU %.1f%% (4N FLOPs/token, N=218M, attention FLOPs not counted)", 100 * mfu) : "MFU n/a (unknown peak)"});
    });
  }
  if (msNf4 > 0 && msBf16 > 0)
    gTable.push_back({"NF4 tax (layer, own kernels)", fmt("%.1f%%", 100 * (msNf4 / msBf16 - 1)), fmt("bf16 %.1f ms", msBf16), fmt("%.3f", msNf4 / msBf16),
                      "target ≤ 5%"});
  if (msNf4Cublas > 0 && msCublas > 0)
    gTable.push_back({"NF4 tax (layer, backend default: cuBLAS)", fmt("%.1f%%", 100 * (msNf4Cublas / msCublas - 1)),
                      fmt("bf16 %.1f ms", msCublas), fmt("%.3f", msNf4Cublas / msCublas), "target ≤ 5%"});
}

}  // namespace layer

// ------------------------------------------------------------------ main
int main(int argc, char** argv) {
  const bool benchOnly = argc > 1 && std::string(argv[1]) == "--bench-only";
  const bool checkOnly = argc > 1 && std::string(argv[1]) == "--check-only";
  const DeviceStatus st = probeDevice();
  std::printf("device: %s (cc %d.%d, %d SMs, %.0f GiB), runtime %d, driver %d\n", st.available ? st.name.c_str() : "none",
              st.ccMajor, st.ccMinor, st.smCount, st.totalMemory / 1073741824.0, st.runtimeVersion, st.driverVersion);
  if (!st.available) {
    std::printf("no CUDA device: %s\n", st.reason.c_str());
    return 2;
  }
  try {
    rt();
    std::printf("cuBLAS: %s\n", cublasStatus().loaded ? (cublasStatus().library + " version " + std::to_string(cublasStatus().version)).c_str()
                                                       : ("absent (" + cublasStatus().detail + ")").c_str());
    if (!benchOnly) {
      checkQuant4();
      checkElementwise();
      checkGemm();
      checkGemm4bit();
      checkFused();
      for (const auto& e : qk::harness::extras())
        if (e.check) e.check();
    }
    if (!checkOnly) {
      std::printf("benchmarks (medians)...\n");
      double copyGBs = 0;
      guarded("bench: copy + dequant", [&] { benchCopyAndDequant(copyGBs); });
      guarded("bench: GEMM", [&] { benchGemm(); });
      layer::bench(st.name);
      for (const auto& e : qk::harness::extras())
        if (e.bench) guarded(std::string("bench: ") + e.name, e.bench);
    }
  } catch (const std::exception& e) {
    std::printf("FATAL: %s\n", e.what());
    return 3;
  }
  std::printf("\n| benchmark | ours | peer / reference | ratio | note |\n|---|---|---|---|---|\n");
  for (const Row& r : gTable) std::printf("| %s | %s | %s | %s | %s |\n", r.what.c_str(), r.ours.c_str(), r.peer.c_str(), r.ratio.c_str(), r.note.c_str());
  std::printf("\nchecks: %d passed, %d failed\n", gPass, gFail);
  for (const std::string& f : gFailures) std::printf("  failed: %s\n", f.c_str());
  return gFail == 0 ? 0 : 1;
}
