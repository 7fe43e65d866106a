// Kernel check without Node: the GEMM micro-kernels + driver, the 4-bit GEMM/GEMV and the attention
// tile against scalar references (f64 accumulation), on odd shapes that reach full register tiles
// and their remainders, at 1 and 3 pool threads (results must also be bit-identical across them).
// Built for arm64 by test/arm64-qemu.test.ts with g++-aarch64-linux-gnu and run under qemu-aarch64
// (the NEON paths), and runnable natively on any host:
//   g++ -std=c++17 -O2 -Icsrc test/arm64/kernel_check.cc csrc/{gemm_kernels,gemm_driver,nf4_decode,nf4_gemv,pool,attention_sse}.cc -pthread
// Prints one line per check and "ALL PASS" (exit 0), or the first mismatches and exit 1.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "attention.h"
#include "gemm_driver.h"
#include "gemm_kernels.h"
#include "nf4_format.h"
#include "nf4_gemv.h"
#include "pool.h"

namespace {

using namespace qlora;

int failures = 0;

struct Rng {
  uint64_t s;
  float next() {  // uniform in [-1, 1)
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<float>(static_cast<int64_t>(s >> 40) - (int64_t{1} << 23)) / float(1 << 23);
  }
};

std::vector<float> rand_vec(size_t n, uint64_t seed) {
  Rng r{seed * 0x9E3779B97F4A7C15ULL + 1};
  std::vector<float> v(n);
  for (auto& x : v) x = r.next();
  return v;
}

// |got - want| <= tol * (1 + |want|) * sqrt(terms), the GEMM tests' bound (README "Tests").
void expect_close(const std::string& what, const std::vector<float>& got, const std::vector<double>& want,
                  double terms, double tol = 1e-5) {
  double worst = 0;
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double bound = tol * (1 + std::fabs(want[i])) * std::sqrt(std::max(terms, 1.0));
    const double err = std::fabs(got[i] - want[i]);
    worst = std::max(worst, err / bound);
    if (!(err <= bound) && bad++ == 0) first = i;
  }
  if (bad) {
    ++failures;
    std::printf("FAIL %s: %zu of %zu outside the bound, first at %zu (got %.9g want %.9g)\n", what.c_str(), bad,
                want.size(), first, got[first], want[first]);
  } else {
    std::printf("ok   %s (worst %.3f of the bound)\n", what.c_str(), worst);
  }
}

void expect_identical(const std::string& what, const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0) return;
  ++failures;
  std::printf("FAIL %s: results differ between thread counts\n", what.c_str());
}

struct RowMajor final : APacker, BPacker {
  const float* d;
  int64_t ld;
  RowMajor(const float* data, int64_t l) : d(data), ld(l) {}
  void pack(int64_t i0, int64_t mc, int64_t p0, int64_t kc, int mr, float* dst) const override {  // A [m, k]
    for (int64_t s = 0; s < mc; s += mr, dst += mr * kc)
      for (int64_t p = 0; p < kc; ++p)
        for (int ii = 0; ii < mr; ++ii) dst[p * mr + ii] = s + ii < mc ? d[(i0 + s + ii) * ld + p0 + p] : 0.0f;
  }
};
struct RowMajorB final : BPacker {  // B [k, n]
  const float* d;
  int64_t ld;
  RowMajorB(const float* data, int64_t l) : d(data), ld(l) {}
  void pack(int64_t p0, int64_t kc, int64_t j0, int64_t nc, int nr, float* dst) const override {
    for (int64_t s = 0; s < nc; s += nr, dst += nr * kc)
      for (int64_t p = 0; p < kc; ++p)
        for (int jj = 0; jj < nr; ++jj) dst[p * nr + jj] = s + jj < nc ? d[(p0 + p) * ld + j0 + s + jj] : 0.0f;
  }
};

void check_gemm(const GemmKernel& K) {
  const int64_t shapes[][3] = {{1, 1, 1}, {7, 3, 5}, {17, 63, 129}, {65, 257, 63}, {129, 300, 97}, {297, 301, 283}};
  for (const auto& s : shapes) {
    const int64_t m = s[0], k = s[1], n = s[2];
    const auto a = rand_vec(m * k, m * 7 + k), b = rand_vec(k * n, n * 3 + k);
    std::vector<double> want(m * n);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0;
        for (int64_t p = 0; p < k; ++p) acc += double(a[i * k + p]) * b[p * n + j];
        want[i * n + j] = acc;
      }
    std::vector<float> runs[2];
    const int threads[2] = {1, 3};
    for (int t = 0; t < 2; ++t) {
      set_num_threads(threads[t]);
      runs[t].assign(m * n, NAN);
      gemm(K, m, n, k, RowMajor(a.data(), k), RowMajorB(b.data(), n), runs[t].data(), n);
    }
    const std::string what = std::string("gemm ") + K.name + " " + std::to_string(m) + "x" + std::to_string(k) +
                             "x" + std::to_string(n);
    expect_close(what, runs[0], want, double(k));
    expect_identical(what, runs[0], runs[1]);
    // C += A·B (the driver's accumulate_c: micro-kernels accumulate into C from the first k panel)
    std::vector<float> acc = rand_vec(m * n, m + n);
    std::vector<double> want_acc(m * n);
    for (int64_t i = 0; i < m * n; ++i) want_acc[i] = want[i] + acc[i];
    set_num_threads(3);
    gemm(K, m, n, k, RowMajor(a.data(), k), RowMajorB(b.data(), n), acc.data(), n, true, 1, true);
    expect_close(what + " accumulate", acc, want_acc, double(k));
  }
}

// bitsandbytes 4-bit layout (nf4_format.h): element e in byte e/2, even e in the HIGH nibble.
struct Weight {
  std::vector<uint8_t> codes;
  std::vector<float> absmax;
  Quant4 q;
};
Weight make_weight(int64_t n, int64_t k, int64_t blocksize, uint64_t seed) {
  Weight w;
  Rng r{seed};
  w.codes.resize((n * k + 1) / 2);
  for (auto& c : w.codes) c = static_cast<uint8_t>((r.next() + 1) * 128) & 0xff;
  w.absmax.resize((n * k + blocksize - 1) / blocksize);
  for (auto& a : w.absmax) a = 0.5f + std::fabs(r.next());
  w.q.codes = w.codes.data();
  w.q.n = n;
  w.q.k = k;
  w.q.blocksize = blocksize;
  w.q.lut = nf4_lut();
  w.q.absmax = w.absmax.data();
  return w;
}
double dequant(const Quant4& q, int64_t e) {
  const uint8_t byte = q.codes[e / 2];
  return double(q.lut[e % 2 == 0 ? byte >> 4 : byte & 15] * q.absmax[e / q.blocksize]);
}

// Forward y = x . dequant(W)^T through the GEMV (m <= 4, when it applies) and the tiled driver path.
struct QuantTB final : BPacker {  // B(p, j) = W[j, p]
  const Quant4& q;
  explicit QuantTB(const Quant4& w) : q(w) {}
  void pack(int64_t p0, int64_t kc, int64_t j0, int64_t nc, int nr, float* dst) const override {
    std::vector<float> run(kc);
    for (int64_t s = 0; s < nc; s += nr, dst += nr * kc)
      for (int jj = 0; jj < nr; ++jj) {
        if (s + jj < nc) nf4_decode_run(q, (j0 + s + jj) * q.k + p0, kc, run.data());
        for (int64_t p = 0; p < kc; ++p) dst[p * nr + jj] = s + jj < nc ? run[p] : 0.0f;
      }
  }
};

void check_nf4(const GemmKernel& K) {
  const int64_t cases[][3] = {{37, 128, 64}, {299, 320, 64}, {33, 256, 128}, {70, 96, 32}, {17, 63, 64}};
  for (const auto& c : cases) {
    const int64_t n = c[0], k = c[1], bs = c[2];
    const Weight w = make_weight(n, k, bs, n * 131 + k);
    for (int64_t m : {1, 3, 4, 13}) {
      const auto x = rand_vec(m * k, m + 11);
      std::vector<double> want(m * n);
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) {
          double acc = 0;
          for (int64_t p = 0; p < k; ++p) acc += double(x[i * k + p]) * dequant(w.q, j * k + p);
          want[i * n + j] = acc;
        }
      const std::string what = std::string("nf4 ") + K.name + " n" + std::to_string(n) + " k" + std::to_string(k) +
                               " bs" + std::to_string(bs) + " m" + std::to_string(m);
      std::vector<float> runs[2];
      const int threads[2] = {1, 3};
      bool gemv = false;
      for (int t = 0; t < 2; ++t) {
        set_num_threads(threads[t]);
        runs[t].assign(m * n, NAN);
        gemv = nf4_gemv(w.q, x.data(), m, runs[t].data());
        if (!gemv) gemm(K, m, n, k, RowMajor(x.data(), k), QuantTB(w.q), runs[t].data(), n, true, 16);
      }
      expect_close(what + (gemv ? " gemv" : " tiled"), runs[0], want, double(k));
      expect_identical(what, runs[0], runs[1]);
    }
  }
}

#if defined(__aarch64__)
// The GEMV must actually take the NEON path on arm64 for the shapes it supports (blocksize % 32 == 0).
void check_gemv_taken() {
  const Weight w = make_weight(8, 64, 64, 5);
  const auto x = rand_vec(64, 1);
  std::vector<float> y(8);
  if (!nf4_gemv(w.q, x.data(), 1, y.data())) {
    ++failures;
    std::printf("FAIL nf4 gemv: the NEON GEMV declined a blocksize-64 weight\n");
  }
}
#endif

// Causal attention forward (no segments, layout [b, h, s, d]): out and lse from sse::attn_forward (the
// 128-bit level: SSE on x86-64, NEON on arm64) against an f64 softmax reference, including a KV-cache
// case (kv_seq > seq: query i at position offset + i sees keys j <= offset + i) and sliding windows
// (keys offset + i - window < j only).
void check_attention() {
  // batch, heads, kv heads, seq, cached keys, window (0 = none)
  const int64_t shapes[][6] = {{1, 4, 1, 5, 0, 0},   {1, 4, 2, 129, 0, 0}, {2, 2, 1, 70, 0, 0},
                               {1, 4, 2, 67, 61, 0}, {1, 2, 1, 200, 0, 37}, {1, 2, 2, 67, 61, 64}};
  for (const auto& s : shapes)
    for (int64_t d : {8, 24, 64}) {
      AttnProblem p{};
      p.batch = s[0], p.heads = s[1], p.kv_heads = s[2], p.seq = s[3], p.d = d;
      p.kv_seq = s[3] + s[4], p.offset = s[4], p.window = s[5];
      const int64_t S = p.seq, KS = p.kv_seq, G = p.heads / p.kv_heads;
      p.q_rs = d, p.q_hs = S * d, p.q_bs = p.heads * S * d;
      p.kv_rs = d, p.kv_hs = KS * d, p.kv_bs = p.kv_heads * KS * d;
      p.scale = 1.0f / std::sqrt(float(d));
      const auto q = rand_vec(p.batch * p.heads * S * d, 1 + d), k = rand_vec(p.batch * p.kv_heads * KS * d, 2 + d),
                 v = rand_vec(p.batch * p.kv_heads * KS * d, 3 + d);
      p.q = q.data(), p.k = k.data(), p.v = v.data(), p.seg = nullptr;
      std::vector<float> kt(attn_kt_floats(p));  // K tile by tile, transposed (as attention.cc builds it)
      const int64_t tiles = attn_key_tiles(p);
      for (int64_t bh = 0; bh < p.batch * p.kv_heads; ++bh)
        for (int64_t t = 0; t < tiles; ++t)
          for (int64_t j = 0; j < std::min(kAttnBc, KS - t * kAttnBc); ++j)
            for (int64_t c = 0; c < d; ++c)
              kt[((bh * tiles + t) * d + c) * kAttnBc + j] = k[(bh * KS + t * kAttnBc + j) * d + c];
      p.kt = kt.data();
      std::vector<float> out(q.size(), NAN), lse(p.batch * p.heads * S, NAN);
      std::vector<float> scratch(attn_forward_scratch(p));
      sse::attn_forward(p, out.data(), lse.data(), 0, attn_forward_tasks(p), scratch.data());
      std::vector<double> want(out.size()), want_lse(lse.size());
      for (int64_t b = 0; b < p.batch; ++b)
        for (int64_t h = 0; h < p.heads; ++h)
          for (int64_t i = 0; i < S; ++i) {
            const int64_t qo = ((b * p.heads + h) * S + i) * d, kvo = (b * p.kv_heads + h / G) * KS * d;
            const int64_t last = p.offset + i;  // causal: keys first..offset+i
            const int64_t first = p.window > 0 ? std::max<int64_t>(0, last - p.window + 1) : 0;
            std::vector<double> sc(last + 1 - first);
            double mx = -INFINITY, sum = 0;
            for (int64_t j = first; j <= last; ++j) {
              double dot = 0;
              for (int64_t c = 0; c < d; ++c) dot += double(q[qo + c]) * k[kvo + j * d + c];
              mx = std::max(mx, sc[j - first] = dot * p.scale);
            }
            for (auto& x : sc) sum += (x = std::exp(x - mx));
            for (int64_t c = 0; c < d; ++c) {
              double o = 0;
              for (int64_t j = first; j <= last; ++j) o += sc[j - first] * v[kvo + j * d + c];
              want[qo + c] = o / sum;
            }
            want_lse[(b * p.heads + h) * S + i] = mx + std::log(sum);
          }
      const std::string what = "attention fwd b" + std::to_string(p.batch) + " h" + std::to_string(p.heads) + "/" +
                               std::to_string(p.kv_heads) + " seq" + std::to_string(S) + " kv" + std::to_string(KS) +
                               " d" + std::to_string(d) + (p.window ? " window" + std::to_string(p.window) : "");
      // attention.test.ts's bound: 1e-5 + 1e-4 |want|
      double worst = 0;
      for (size_t i = 0; i < out.size(); ++i)
        worst = std::max(worst, std::fabs(out[i] - want[i]) / (1e-5 + 1e-4 * std::fabs(want[i])));
      for (size_t i = 0; i < lse.size(); ++i)
        worst = std::max(worst, std::fabs(lse[i] - want_lse[i]) / (1e-5 + 1e-4 * std::fabs(want_lse[i])));
      if (!(worst <= 1)) {
        ++failures;
        std::printf("FAIL %s: worst %.3f of the bound\n", what.c_str(), worst);
      } else {
        std::printf("ok   %s (worst %.3f of the bound)\n", what.c_str(), worst);
      }
    }
}

}  // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // keep every line when a check crashes
#if defined(__aarch64__)
  std::printf("arch arm64\n");
#elif defined(__x86_64__)
  std::printf("arch x86-64\n");
#endif
  for (const char* isa : {"scalar", ""}) {  // the floor, then the best this CPU has (neon on arm64)
    const GemmKernel& K = gemm_kernel_for(isa);
    set_gemm_kernel(isa);  // the GEMV follows the current choice
    std::printf("kernel %s (%dx%d)\n", K.name, K.mr, K.nr);
    check_gemm(K);
    check_nf4(K);
  }
#if defined(__aarch64__)
  check_gemv_taken();
#endif
  check_attention();
  std::printf(failures ? "%d FAILED\n" : "ALL PASS\n", failures);
  return failures ? 1 : 0;
}
