// GPU check for csrc/kernels/lora.cu (fused LoRA rank-r accumulate) against an f64 host product, and
// its benchmark against the unfused form (GEMM into a temporary, then y += temporary).
#include "harness.h"

namespace {

/** y0 + scale · t·op(B) in f64; t [m,r], B [n,r] (bT) or [r,n]; bf16 inputs given as floats. */
std::vector<double> hostLora(const std::vector<float>& y0, const std::vector<float>& t, const std::vector<float>& b,
                             bool bT, int m, int n, int r, float scale) {
  std::vector<double> y(y0.begin(), y0.end());
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double acc = 0;
      for (int k = 0; k < r; ++k) acc += double(t[size_t(i) * r + k]) * double(bT ? b[size_t(j) * r + k] : b[size_t(k) * n + j]);
      y[size_t(i) * n + j] += double(scale) * acc;
    }
  return y;
}

void checkOne(int m, int n, int r, bool bT, bool bf16) {
  std::vector<float> t = randn(size_t(m) * r), b = randn(size_t(n) * r), y0 = randn(size_t(m) * n);
  std::vector<uint16_t> tb(t.size()), bb(b.size());
  if (bf16) {  // the reference sees exactly the bf16 values the kernel reads
    for (size_t i = 0; i < t.size(); ++i) { tb[i] = toBf16(t[i]); t[i] = bf16ToF(tb[i]); }
    for (size_t i = 0; i < b.size(); ++i) { bb[i] = toBf16(b[i]); b[i] = bf16ToF(bb[i]); }
  }
  const float scale = 2.0f;  // lora_alpha / r, e.g. 32 / 16
  const std::vector<double> want = hostLora(y0, t, b, bT, m, n, r, scale);
  float* y = up(y0);
  void* dt = bf16 ? static_cast<void*>(up(tb)) : static_cast<void*>(up(t));
  void* db = bf16 ? static_cast<void*>(up(bb)) : static_cast<void*>(up(b));
  qk::loraAccumulate(S(), dt, db, bf16 ? BF16 : F32, bT, m, n, r, scale, y);
  const std::vector<float> got = down(y, want.size());
  // f32 FMA accumulation of r products of unit-scale values, then one f32 add: error <= ~r·2^-24·Σ|terms|
  const double atol = 1e-5 * r;
  char name[160];
  std::snprintf(name, sizeof name, "lora accumulate m=%d n=%d r=%d B=%s %s", m, n, r, bT ? "[n,r]" : "[r,n]", bf16 ? "bf16" : "f32");
  reportCmp(name, compare(got, want, atol, 1e-6));
  dfree(y); dfree(dt); dfree(db);
}

void checkLora() {
  std::printf("lora (fused rank-r accumulate)\n");
  guarded("lora accumulate", [] {
    for (bool bf16 : {false, true})
      for (bool bT : {true, false}) {
        checkOne(37, 200, 16, bT, bf16);  // partial tiles in both directions
        checkOne(1, 1, 1, bT, bf16);
        checkOne(64, 256, 64, bT, bf16);  // the largest rank, full tiles
      }
    checkOne(300, 1030, 7, true, true);  // odd rank (odd smem stride path), several row blocks
    bool threw = false;
    try { qk::loraAccumulate(S(), nullptr, nullptr, BF16, true, 4, 4, 65, 1.f, nullptr); } catch (const ArgError&) { threw = true; }
    report("lora accumulate rejects r > 64 before launching", threw);
  });
}

void benchLora() {
  // Llama-8B MLP up/gate projection: T = 2048 tokens, n = 14336, r = 16, bf16 t and B, f32 y.
  const int m = 2048, n = 14336, r = 16;
  Timer timer;
  std::vector<uint16_t> th(size_t(m) * r), bh(size_t(n) * r);
  for (auto& v : th) v = toBf16(0.01f);
  for (auto& v : bh) v = toBf16(0.01f);
  uint16_t* t = up(th);
  uint16_t* b = up(bh);
  float* y = dalloc<float>(size_t(m) * n);
  float* u = dalloc<float>(size_t(m) * n);
  QK_CHECK(cudaMemsetAsync(y, 0, size_t(m) * n * sizeof(float), S()));
  const double fused = timer.median(9, [&] { qk::loraAccumulate(S(), t, b, BF16, true, m, n, r, 2.f, y); });
  View v;
  v.rank = 1; v.shape[0] = int64_t(m) * n; v.strides[0] = 1;
  GemmArgs g;
  g.m = m; g.n = n; g.k = r; g.transB = true; g.dtype = BF16;
  const double unfused = timer.median(9, [&] {
    gemm(S(), g, t, b, u);
    binary(S(), B_ADD, y, v, u, v, y);
  });
  const double bytes = 2.0 * m * n * 4;  // y read + written once
  gTable.push_back({"LoRA up-projection accumulate 2048×14336, r=16 (fused)", fmt("%.3f ms", fused),
                    fmt("unfused GEMM + add %.3f ms", unfused), fmt("%.2fx", unfused / fused),
                    fmt("fused moves y at %.0f GB/s", bytes / (fused * 1e-3) / 1e9)});
  dfree(t); dfree(b); dfree(y); dfree(u);
}

qk::harness::Register reg("lora", checkLora, benchLora);

}  // namespace
