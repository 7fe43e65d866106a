// Pipelined tensor-core GEMMs and the 4-bit matmul paths (csrc/kernels/gemm_pipe.cuh, gemm.cu,
// gemm_nf4.cu, gemm4bit_f32.cu). Registered as "gemm-pipeline"; runs inside dev/gpu_check.cu.
// Compiled, unverified on a GPU.
//  check:
//   - dense bf16 TC GEMM, legacy WMMA and pipelined mma.sync, all four transpose combinations, batch
//     (incl. a broadcast operand), odd shapes (which must fall back to legacy cleanly) and aligned big
//     ones, against a host f64 GEMM of the bf16 inputs;
//   - gemm4bit / gemm4bitInputGrad on every path (legacy, fused pipelined, dequant-cublas when cuBLAS
//     loads): NF4 + FP4, double quant on/off, m = 1, 17, 256, 1024, f32 and bf16 outputs, a weight that
//     needs several dequant panels, against host dequant (bf16(fl32(LUT · absmax)), double quant with
//     the kernels' two roundings) → f64 GEMM;
//   - gemm4bitF32 (the exact-f32 path of the Backend: SIMT on-the-fly, and f32 panels + cuBLAS SGEMM) against
//     host f32 dequant → f64 GEMM.
//  bench: cuBLAS bf16 (peer) vs our TC GEMM (pipelined, legacy) and the 4-bit paths at the Llama-8B
//   training shapes, plus the seven linears of one decoder layer (forward + input grad, T = 2048):
//   NF4 (auto path) vs bf16 cuBLAS — the GEMM part of the NF4 tax.
#include "harness.h"

namespace {

const uint32_t kNf4Lut[16] = {0xbf800000u, 0xbf3239b1u, 0xbf066b30u, 0xbeca32a0u, 0xbe91a24du, 0xbe3d353fu,
                              0xbdba7871u, 0x00000000u, 0x3da2faffu, 0x3e24cae3u, 0x3e7c04ddu, 0x3ead033au,
                              0x3ee1a4b8u, 0x3f1007abu, 0x3f3913b3u, 0x3f800000u};
const uint32_t kFp4Lut[16] = {0x00000000u, 0x3baaaaabu, 0x3f2aaaabu, 0x3f800000u, 0x3eaaaaabu, 0x3f000000u,
                              0x3e2aaaabu, 0x3e800000u, 0x80000000u, 0xbbaaaaabu, 0xbf2aaaabu, 0xbf800000u,
                              0xbeaaaaabu, 0xbf000000u, 0xbe2aaaabu, 0xbe800000u};

const char* pathName(int p) {
  switch (p) {
    case GEMM4BIT_LEGACY: return "legacy";
    case GEMM4BIT_FUSED: return "fused";
    case GEMM4BIT_DEQUANT_CUBLAS: return "dequant-cublas";
    default: return "auto";
  }
}

// ------------------------------------------------------------------ dense TC GEMM

/** Element (i, p) of op(A) for batch b (A stored [m, k], or [k, m] when transposed). */
float opA(const std::vector<float>& A, const GemmArgs& g, int64_t as, int b, int i, int p) {
  return g.transA ? A[b * as + int64_t(p) * g.m + i] : A[b * as + int64_t(i) * g.k + p];
}
/** Element (p, j) of op(B) (B stored [k, n], or [n, k] when transposed). */
float opB(const std::vector<float>& B, const GemmArgs& g, int64_t bs, int b, int p, int j) {
  return g.transB ? B[b * bs + int64_t(j) * g.k + p] : B[b * bs + int64_t(p) * g.n + j];
}

std::vector<double> refGemm(const std::vector<float>& A, const std::vector<float>& B, const GemmArgs& g, int64_t as,
                            int64_t bs) {
  std::vector<double> C(int64_t(g.batch) * g.m * g.n, 0.0);
  std::vector<double> a(g.k), bt(int64_t(g.n) * g.k);  // op(A) row, op(B)ᵀ: contiguous dot products
  for (int b = 0; b < g.batch; ++b) {
    for (int j = 0; j < g.n; ++j)
      for (int p = 0; p < g.k; ++p) bt[int64_t(j) * g.k + p] = opB(B, g, bs, b, p, j);
    for (int i = 0; i < g.m; ++i) {
      for (int p = 0; p < g.k; ++p) a[p] = opA(A, g, as, b, i, p);
      for (int j = 0; j < g.n; ++j) {
        double s = 0;
        const double* row = &bt[int64_t(j) * g.k];
        for (int p = 0; p < g.k; ++p) s += a[p] * row[p];
        C[(int64_t(b) * g.m + i) * g.n + j] = s;
      }
    }
  }
  return C;
}

void checkDense() {
  std::printf("pipelined TC GEMM (bf16 in, f32 out) vs legacy WMMA vs host f64\n");
  struct Shape { int batch, m, n, k; int64_t as, bs; };
  const Shape shapes[] = {{1, 129, 70, 200, -1, -1}, {1, 136, 72, 200, -1, -1}, {1, 1024, 512, 768, -1, -1},
                          {3, 128, 136, 72, -1, -1}, {2, 64, 256, 96, -1, 0},  {1, 129, 70, 201, -1, -1},
                          {1, 8, 8, 8, -1, -1}};
  for (const Shape& s : shapes)
    for (int combo = 0; combo < 4; ++combo) {
      const bool ta = combo & 1, tb = combo & 2;
      GemmArgs g;
      g.batch = s.batch; g.m = s.m; g.n = s.n; g.k = s.k; g.transA = ta; g.transB = tb; g.dtype = BF16;
      g.aBatchStride = s.as; g.bBatchStride = s.bs;
      const int64_t as = s.as < 0 ? int64_t(s.m) * s.k : s.as, bs = s.bs < 0 ? int64_t(s.k) * s.n : s.bs;
      const int64_t na = (s.batch - 1) * as + int64_t(s.m) * s.k, nb = (s.batch - 1) * bs + int64_t(s.k) * s.n;
      std::vector<float> A = randn(na), B = randn(nb);
      std::vector<uint16_t> Ab(na), Bb(nb);
      for (int64_t i = 0; i < na; ++i) { Ab[i] = toBf16(A[i]); A[i] = bf16ToF(Ab[i]); }
      for (int64_t i = 0; i < nb; ++i) { Bb[i] = toBf16(B[i]); B[i] = bf16ToF(Bb[i]); }
      const std::vector<double> want = refGemm(A, B, g, as, bs);
      // The pipelined kernel's rule (allocator blocks are 16-byte aligned): batch strides % 8 and the
      // contiguous extent of each operand % 8 (k for a k-major operand, else m or n).
      const bool fits = as % 8 == 0 && bs % 8 == 0 && (ta ? s.m : s.k) % 8 == 0 && (tb ? s.k : s.n) % 8 == 0;
      for (int variant : {0, 1}) {
        char name[200];
        std::snprintf(name, sizeof name, "TC GEMM %s batch=%d m=%d n=%d k=%d tA=%d tB=%d%s", variant ? "pipelined" : "legacy",
                      s.batch, s.m, s.n, s.k, ta, tb, s.bs == 0 ? " (B broadcast)" : "");
        guarded(name, [&] {
          uint16_t* dA = up(Ab);
          uint16_t* dB = up(Bb);
          float* C = dalloc<float>(int64_t(s.batch) * s.m * s.n);
          const bool ran = gemmTensorCoreBf16(S(), g, dA, dB, C, variant);
          const Cmp c = compare(down(C, int64_t(s.batch) * s.m * s.n), want, 1e-5, 1e-4, 1e-5);
          reportCmp(std::string(name) + (ran ? " [ran pipelined]" : " [ran legacy]"), c);
          report(std::string(name) + " path selection", ran == (variant == 1 && fits));
          dfree(dA); dfree(dB); dfree(C);
        });
      }
    }
  // Operands 2 bytes past a 16-byte boundary with K % 8 == 0: the pipeline must decline (alignment), and
  // the legacy kernel must not take its uint4 loader (it did before the aligned16 check in gemm.cu).
  for (int tb : {0, 1}) {
    GemmArgs g;
    g.m = 136; g.n = 72; g.k = 200; g.transB = tb; g.dtype = BF16;
    const int64_t na = int64_t(g.m) * g.k, nb = int64_t(g.k) * g.n;
    std::vector<float> A = randn(na), B = randn(nb);
    std::vector<uint16_t> Ab(na + 1), Bb(nb + 1);  // element 0 is padding
    for (int64_t i = 0; i < na; ++i) { Ab[i + 1] = toBf16(A[i]); A[i] = bf16ToF(Ab[i + 1]); }
    for (int64_t i = 0; i < nb; ++i) { Bb[i + 1] = toBf16(B[i]); B[i] = bf16ToF(Bb[i + 1]); }
    const std::vector<double> want = refGemm(A, B, g, na, nb);
    const std::string name = std::string("TC GEMM misaligned operands (base + 2 B) m=136 n=72 k=200 tB=") + std::to_string(tb);
    guarded(name, [&] {
      uint16_t* dA = up(Ab);
      uint16_t* dB = up(Bb);
      float* C = dalloc<float>(int64_t(g.m) * g.n);
      const bool ran = gemmTensorCoreBf16(S(), g, dA + 1, dB + 1, C, 1);
      reportCmp(name, compare(down(C, int64_t(g.m) * g.n), want, 1e-5, 1e-4, 1e-5));
      report(name + " falls back to legacy", !ran);
      dfree(dA); dfree(dB); dfree(C);
    });
  }
}

// ------------------------------------------------------------------ 4-bit weights

/** A random 4-bit weight [n, k] (random codes, absmax or double-quant state) and its host dequantization. */
struct TestWeight {
  Weight4bit w;
  std::vector<float> deqF32, deqBf16;  // fl32(LUT · absmax) and its bf16 rounding, as floats
  std::vector<void*> owned;
  TestWeight(int n, int k, int bs, bool fp4, bool dq, bool hostRef = true) {
    const int64_t count = int64_t(n) * k, nb = (count + bs - 1) / bs;
    std::vector<uint8_t> codes((count + 1) / 2);
    for (auto& c : codes) c = uint8_t(gRng());
    std::vector<float> scale(nb);
    w.n = n; w.k = k; w.blocksize = bs; w.fp4 = fp4;
    w.codes = up(codes);
    owned.push_back((void*)w.codes);
    if (dq) {
      std::vector<uint8_t> q(nb);
      for (auto& v : q) v = uint8_t(gRng());
      std::vector<float> code(256);
      for (int i = 0; i < 256; ++i) code[i] = bitsToF(kSignedMapBits[i]);
      const std::vector<float> nested = randu((nb + 255) / 256, 0.01f, 0.05f);
      const float offset = 0.03f;
      for (int64_t b = 0; b < nb; ++b) {  // the kernels' two roundings: fl32(fl32(code[q] · nested) + offset)
        volatile float prod = code[q[b]] * nested[b / 256];
        volatile float sum = prod + offset;
        scale[b] = sum;
      }
      w.absmax.qabsmax = up(q); w.absmax.code = up(code); w.absmax.nestedAbsmax = up(nested);
      w.absmax.nestedBlocksize = 256; w.absmax.offset = offset;
      owned.insert(owned.end(), {(void*)w.absmax.qabsmax, (void*)w.absmax.code, (void*)w.absmax.nestedAbsmax});
    } else {
      scale = randu(nb, 0.01f, 0.1f);
      w.absmax.absmax = up(scale);
      owned.push_back((void*)w.absmax.absmax);
    }
    if (!hostRef) return;  // benchmarks only read the device weight
    deqF32.resize(count);
    deqBf16.resize(count);
    const uint32_t* lut = fp4 ? kFp4Lut : kNf4Lut;
    for (int64_t i = 0; i < count; ++i) {
      const uint8_t byte = codes[i / 2];
      volatile float v = bitsToF(lut[(i & 1) ? (byte & 15) : (byte >> 4)]) * scale[i / bs];
      deqF32[i] = v;
      deqBf16[i] = bf16ToF(toBf16(v));
    }
  }
  ~TestWeight() { for (void* p : owned) dfree(p); }
  TestWeight(const TestWeight&) = delete;
  TestWeight& operator=(const TestWeight&) = delete;
};

/** y[m, n] = x[m, k] · Wᵀ (inputGrad false) or y[m, k] = x[m, n] · W, in f64 over float inputs. */
std::vector<double> refLinear(const std::vector<float>& x, const std::vector<float>& W, int m, int n, int k, bool inputGrad) {
  if (!inputGrad) {
    std::vector<double> y(int64_t(m) * n);
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        double s = 0;
        const float* xr = &x[int64_t(i) * k];
        const float* wr = &W[int64_t(j) * k];
        for (int p = 0; p < k; ++p) s += double(xr[p]) * wr[p];
        y[int64_t(i) * n + j] = s;
      }
    return y;
  }
  std::vector<double> y(int64_t(m) * k, 0.0);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      const double a = x[int64_t(i) * n + j];
      const float* wr = &W[int64_t(j) * k];
      double* yr = &y[int64_t(i) * k];
      for (int p = 0; p < k; ++p) yr[p] += a * wr[p];
    }
  return y;
}

std::vector<float> bf16Vals(const std::vector<uint16_t>& v) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i) f[i] = bf16ToF(v[i]);
  return f;
}
/** Benchmark data (values do not matter, only that they are finite and varied): xorshift, ~1 ns per element,
 * so the ~0.5 G elements of the benchmarks cost about a second of the harness' time budget. */
std::vector<uint16_t> fastBf16Host(int64_t n) {
  std::vector<uint16_t> b(n);
  uint64_t z = 0x9e3779b97f4a7c15ull ^ uint64_t(n);
  for (int64_t i = 0; i < n; ++i) {
    z ^= z << 13; z ^= z >> 7; z ^= z << 17;
    b[i] = toBf16(float(int64_t(z >> 40) - (int64_t(1) << 23)) * 0x1p-23f);  // uniform in [-1, 1)
  }
  return b;
}
std::vector<uint16_t> randBf16Host(int64_t n) {
  std::vector<float> f = randn(n);
  std::vector<uint16_t> b(n);
  for (int64_t i = 0; i < n; ++i) b[i] = toBf16(f[i]);
  return b;
}

/** One (shape, format) case on the requested paths; f32 and (forward) bf16 outputs; f32 and bf16 inputs. */
void check4bitCase(int m, int n, int k, int bs, bool fp4, bool dq, const std::vector<int>& paths) {
  char base[160];
  std::snprintf(base, sizeof base, "%s%s m=%d n=%d k=%d bs=%d", fp4 ? "FP4" : "NF4", dq ? "+DQ" : "", m, n, k, bs);
  guarded(std::string("4-bit setup ") + base, [&] {
    TestWeight tw(n, k, bs, fp4, dq);
    const std::vector<uint16_t> xb = randBf16Host(int64_t(m) * k), dyb = randBf16Host(int64_t(m) * n);
    const std::vector<float> x = bf16Vals(xb), dy = bf16Vals(dyb);
    const std::vector<double> wantY = refLinear(x, tw.deqBf16, m, n, k, false);
    const std::vector<double> wantDx = refLinear(dy, tw.deqBf16, m, n, k, true);
    std::vector<double> wantYb(wantY.size());  // bf16 output: the f64 result rounded once
    for (size_t i = 0; i < wantY.size(); ++i) wantYb[i] = bf16ToF(toBf16(float(wantY[i])));
    uint16_t* dX = up(xb);
    uint16_t* dDy = up(dyb);
    float* dXf = up(x);  // f32 input (holds bf16 values, so the reference is the same)
    float* y = dalloc<float>(int64_t(m) * n);
    uint16_t* yb = dalloc<uint16_t>(int64_t(m) * n);
    float* dx = dalloc<float>(int64_t(m) * k);
    for (int path : paths) {
      const int fwd = gemm4bitResolvePath(path, m, tw.w, false, F32), bwd = gemm4bitResolvePath(path, m, tw.w, true, F32);
      const std::string tag = std::string(base) + " path=" + pathName(path);
      if (fwd != path && path != GEMM4BIT_AUTO)
        std::printf("  (note) %s: forward resolves to %s\n", tag.c_str(), pathName(fwd));
      guarded(tag + " forward", [&] {
        gemm4bit(S(), dX, BF16, m, tw.w, y, F32, path);
        reportCmp(tag + " forward [" + pathName(fwd) + "]", compare(down(y, int64_t(m) * n), wantY, 1e-5, 1e-4, 1e-5));
      });
      guarded(tag + " forward f32 x", [&] {
        gemm4bit(S(), dXf, F32, m, tw.w, y, F32, path);
        reportCmp(tag + " forward f32 x", compare(down(y, int64_t(m) * n), wantY, 1e-5, 1e-4, 1e-5));
      });
      guarded(tag + " forward bf16 y", [&] {
        gemm4bit(S(), dX, BF16, m, tw.w, yb, BF16, path);
        const std::vector<float> got = bf16Vals(down(yb, int64_t(m) * n));
        // One bf16 rounding of an f32 result that is within the f32 tolerance of the f64 one: ≤ 1 bf16 ulp (2^-7 relative).
        reportCmp(tag + " forward bf16 y", compare(got, wantYb, 1e-5, 0x1p-7, 1e-5));
      });
      guarded(tag + " input grad", [&] {
        gemm4bitInputGrad(S(), dDy, BF16, m, tw.w, dx, F32, path);
        reportCmp(tag + " input grad [" + pathName(bwd) + "]", compare(down(dx, int64_t(m) * k), wantDx, 1e-5, 1e-4, 1e-5));
      });
    }
    for (void* p : {(void*)dX, (void*)dDy, (void*)dXf, (void*)y, (void*)yb, (void*)dx}) dfree(p);
  });
}

/** The exact-f32 path, SIMT (path 0) and cuBLAS f32 panels (path 1, when cuBLAS loads). */
void check4bitF32Case(int m, int n, int k, int bs, bool fp4, bool dq) {
  char base[160];
  std::snprintf(base, sizeof base, "exact-f32 4-bit %s%s m=%d n=%d k=%d bs=%d", fp4 ? "FP4" : "NF4", dq ? "+DQ" : "", m, n, k, bs);
  guarded(base, [&] {
    TestWeight tw(n, k, bs, fp4, dq);
    const std::vector<float> x = randn(int64_t(m) * k), dy = randn(int64_t(m) * n);
    const std::vector<double> wantY = refLinear(x, tw.deqF32, m, n, k, false), wantDx = refLinear(dy, tw.deqF32, m, n, k, true);
    float* dX = up(x);
    float* dDy = up(dy);
    float* y = dalloc<float>(int64_t(m) * n);
    float* dx = dalloc<float>(int64_t(m) * k);
    for (int path : {0, 1}) {
      if (path == 1 && !cublasUsable()) continue;
      const std::string name = std::string(base) + (path ? " cuBLAS f32 panels" : " SIMT");
      guarded(name, [&] {
        gemm4bitF32(S(), dX, m, tw.w, y, false, path);
        gemm4bitF32(S(), dDy, m, tw.w, dx, true, path);
        reportCmp(name + " forward", compare(down(y, int64_t(m) * n), wantY, 1e-5, 1e-4, 1e-5));
        reportCmp(name + " input grad", compare(down(dx, int64_t(m) * k), wantDx, 1e-5, 1e-4, 1e-5));
      });
    }
    for (void* p : {(void*)dX, (void*)dDy, (void*)y, (void*)dx}) dfree(p);
  });
}

void check() {
  checkDense();
  std::printf("4-bit GEMM paths (cuBLAS %s)\n", cublasUsable() ? "usable" : "absent: dequant-cublas resolves to fused");
  std::vector<int> paths = {GEMM4BIT_LEGACY, GEMM4BIT_FUSED, GEMM4BIT_AUTO};
  if (cublasUsable()) paths.push_back(GEMM4BIT_DEQUANT_CUBLAS);
  for (int m : {1, 17, 256, 1024})
    for (bool fp4 : {false, true})
      for (bool dq : {false, true}) {
        if (m == 1024 && (fp4 || !dq)) continue;  // the big case once (host reference time)
        check4bitCase(m, 192, 256, 64, fp4, dq, paths);
      }
  check4bitCase(33, 200, 320, 128, false, true, paths);  // n % 8 == 0, n % 128 != 0: tile tails on both axes
  check4bitCase(20, 203, 96, 32, false, false, paths);   // n odd: input grad falls back to legacy (dy rows not 16-B chunks)
  check4bitCase(9, 64, 200, 64, true, true, paths);      // k % 32 != 0: fused falls back to legacy
  check4bitCase(5, 48, 64, 16, false, true, paths);      // blocksize 16: two scales per 32-wide k-tile
  check4bitCase(17, 9216, 4096, 64, false, true, paths); // bf16 copy > 64 MiB: two dequant panels (beta = 1 in dx)
  for (int m : {1, 17, 130})
    for (bool fp4 : {false, true})
      for (bool dq : {false, true}) check4bitF32Case(m, 77, 200, 64, fp4, dq);  // k % blocksize != 0: blocks straddle rows
  check4bitF32Case(64, 256, 512, 128, false, true);
  check4bitF32Case(5, 4608, 4096, 64, false, true);  // f32 copy > 64 MiB: two panels on the cuBLAS path
}

// ------------------------------------------------------------------ benchmarks

double tflops(double flop, double ms) { return flop / (ms * 1e-3) / 1e12; }

void benchShapes() {
  Timer t;
  struct Shape { int m, k, n; };  // y[m, n] = x[m, k] · Wᵀ, W [n, k]
  for (Shape s : {Shape{4096, 4096, 4096}, Shape{4096, 4096, 14336}, Shape{4096, 14336, 4096}}) {
    const double flop = 2.0 * s.m * s.n * s.k;
    const std::string shape = "m,k,n=(" + std::to_string(s.m) + "," + std::to_string(s.k) + "," + std::to_string(s.n) + ")";
    std::vector<uint16_t> xh = fastBf16Host(int64_t(s.m) * s.k);
    uint16_t* x = up(xh);
    std::vector<uint16_t> wh = fastBf16Host(int64_t(s.n) * s.k);
    uint16_t* wb = up(wh);
    TestWeight tw(s.n, s.k, 64, false, true, false);
    float* y = dalloc<float>(int64_t(s.m) * s.n);
    uint16_t* yb = dalloc<uint16_t>(int64_t(s.m) * s.n);
    GemmArgs g;
    g.m = s.m; g.n = s.n; g.k = s.k; g.transB = true; g.dtype = BF16;
    double cbT = 0;
    if (cublasStatus().loaded) {
      const double ms = t.median(5, [&] { gemm(S(), g, x, wb, y, 1); });
      cbT = tflops(flop, ms);
      gTable.push_back({"cuBLAS bf16 GEMM " + shape, fmt("%.0f TFLOP/s", cbT), "-", "-", fmt("%.3f ms (peer)", ms)});
    }
    auto row = [&](const std::string& what, double ms, const char* target) {
      const double T = tflops(flop, ms);
      gTable.push_back({what + " " + shape, fmt("%.0f TFLOP/s", T), cbT > 0 ? fmt("cuBLAS bf16 %.0f TFLOP/s", cbT) : "cuBLAS absent",
                        cbT > 0 ? fmt("%.2f", T / cbT) : "-", fmt("%.3f ms", ms) + target});
    };
    row("own TC GEMM pipelined (mma.sync, 4-stage cp.async)", t.median(5, [&] { gemmTensorCoreBf16(S(), g, x, wb, y, 1); }), "");
    row("own TC GEMM legacy (WMMA, synchronous)", t.median(3, [&] { gemmTensorCoreBf16(S(), g, x, wb, y, 0); }), "");
    row("NF4+DQ GEMM fused pipelined, bf16 out", t.median(5, [&] { gemm4bit(S(), x, BF16, s.m, tw.w, yb, BF16, GEMM4BIT_FUSED); }),
        "; target ≥ 0.8× cuBLAS");
    row("NF4+DQ GEMM fused legacy, bf16 out", t.median(3, [&] { gemm4bit(S(), x, BF16, s.m, tw.w, yb, BF16, GEMM4BIT_LEGACY); }), "");
    if (cublasUsable())
      row("NF4+DQ GEMM dequant-cublas (panels ≤ 64 MiB), bf16 out",
          t.median(5, [&] { gemm4bit(S(), x, BF16, s.m, tw.w, yb, BF16, GEMM4BIT_DEQUANT_CUBLAS); }), "; target ≥ 0.8× cuBLAS");
    if (s.n == s.k) {  // one size of the exact-f32 path (SIMT; the Backend's default matmul4bit)
      float* xf = dalloc<float>(int64_t(s.m) * s.k);
      QK_CHECK(cudaMemsetAsync(xf, 0, sizeof(float) * int64_t(s.m) * s.k, S()));
      row("exact-f32 4-bit matmul SIMT (on-the-fly dequant), f32 x", t.median(3, [&] { gemm4bitF32(S(), xf, s.m, tw.w, y, false, 0); }), "");
      if (cublasUsable())
        row("exact-f32 4-bit matmul cuBLAS SGEMM (f32 panels ≤ 64 MiB), f32 x",
            t.median(3, [&] { gemm4bitF32(S(), xf, s.m, tw.w, y, false, 1); }), "");
      dfree(xf);
    }
    for (void* p : {(void*)x, (void*)wb, (void*)y, (void*)yb}) dfree(p);
  }
}

/** The 7 frozen linears of a Llama-3-8B decoder layer at T = 2048 tokens: forward + input grad,
 * NF4+DQ on the auto path (what training uses) vs bf16 weights through cuBLAS. */
void benchLayerLinears() {
  if (!cublasStatus().loaded) {
    gTable.push_back({"layer linears NF4 tax (GEMMs only)", "-", "cuBLAS absent", "-", "needs cuBLAS as the bf16 peer"});
    return;
  }
  Timer t;
  const int T = 2048;
  struct Lin { int out, in; };
  const Lin lins[] = {{4096, 4096}, {1024, 4096}, {1024, 4096}, {4096, 4096}, {14336, 4096}, {14336, 4096}, {4096, 14336}};
  double msNf4 = 0, msBf16 = 0;
  for (const Lin& l : lins) {
    TestWeight tw(l.out, l.in, 64, false, true, false);
    uint16_t* wb = up(fastBf16Host(int64_t(l.out) * l.in));
    uint16_t* x = up(fastBf16Host(int64_t(T) * l.in));
    uint16_t* dy = up(fastBf16Host(int64_t(T) * l.out));
    float* y = dalloc<float>(int64_t(T) * l.out);
    float* dx = dalloc<float>(int64_t(T) * l.in);
    GemmArgs gf, gb;
    gf.m = T; gf.n = l.out; gf.k = l.in; gf.transB = true; gf.dtype = BF16;
    gb.m = T; gb.n = l.in; gb.k = l.out; gb.dtype = BF16;
    msNf4 += t.median(5, [&] {
      gemm4bit(S(), x, BF16, T, tw.w, y, F32);
      gemm4bitInputGrad(S(), dy, BF16, T, tw.w, dx, F32);
    });
    msBf16 += t.median(5, [&] {
      gemm(S(), gf, x, wb, y, 1);
      gemm(S(), gb, dy, wb, dx, 1);
    });
    for (void* p : {(void*)wb, (void*)x, (void*)dy, (void*)y, (void*)dx}) dfree(p);
  }
  TestWeight probe(4096, 4096, 64, false, true, false);
  gTable.push_back({"layer linears fwd + input grad, NF4+DQ auto path (" + std::string(pathName(gemm4bitResolvePath(GEMM4BIT_AUTO, T, probe.w, false, F32))) + ")",
                    fmt("%.2f ms", msNf4), fmt("bf16 cuBLAS %.2f ms", msBf16), fmt("%.3f", msNf4 / msBf16),
                    fmt("NF4 tax of the GEMMs %.1f%%; the layer target (≤ 5%%) also counts attention etc.", 100 * (msNf4 / msBf16 - 1))});
}

void bench() {
  benchShapes();
  benchLayerLinears();
}

qk::harness::Register reg("gemm-pipeline", check, bench);

}  // namespace
