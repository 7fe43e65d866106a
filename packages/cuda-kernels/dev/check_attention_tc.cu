// GPU check of the tensor-core attention (csrc/kernels/attention_tc.cu) and of the SIMT path it falls
// back to (attention.cu), both against a plain CPU f64 reference, plus a TC-vs-SIMT benchmark.
// Registered as "attention-tc"; runs inside dev/gpu_check.cu.
//
// Inputs are rounded to bf16 before anything sees them, so the reference, the SIMT kernel and the TC
// kernels start from identical values; what remains is the TC kernels' own rounding.
//
// Tolerance rule (per element, derived, not tuned): every product the TC kernels accumulate carries at
// most a few bf16 roundings of one factor (P or dS rounded to bf16: 2^-9 relative each; delta computed
// from the bf16-rounded out: ≤ 2^-7·Σ|dO|·Σ P|V|; the output itself rounded to bf16: 2^-9·|ref|), and
// the f32 accumulation adds ~D·2^-24. Bounding each term by its absolute value gives
//     |got − ref| ≤ 2^-6 · A + 2^-8 · |ref| + 1e-6,
// where A is the same sum taken over absolute values (computed by the reference next to each output):
//     out: Σ_j P_ij |v_j|          dv: Σ_i P_ij |dO_i|
//     dq:  scale · Σ_j P_ij (|dP_ij| + δA_i) |k_j|      dk: scale · Σ_i P_ij (|dP_ij| + δA_i) |q_i|
//     δA_i = Σ_d |dO_id| · A(out)_id  (bounds |delta_i| and its error).
// A gross bug (wrong tile, mask or index) is O(|ref|) per element; a systematic one also shows in the
// relative L2 error, checked ≤ 2^-6 (random rounding errors give ~2^-9). The SIMT kernel computes in
// f32 throughout: 2^-13 · A + 1e-5 · |ref| + 1e-6 and relative L2 ≤ 1e-4.
// lse: f32 scores of bf16-exact products, |Δs| ≤ D·2^-24·scale·Σ|q||k| ≈ 5e-5 here; checked at
// 2e-4 + 1e-5·|lse| for every path.
#include "harness.h"

namespace {

struct Case {
  int b, h, kv, seq, d;
  bool segments;
};

struct Ref {
  std::vector<double> out, lse, dq, dk, dv;  // values
  std::vector<double> aOut, aDq, aDk, aDv;   // absolute sums (the tolerance's A)
};

std::vector<float> bf16Rounded(std::vector<float> x) {
  for (float& v : x) v = bf16ToF(toBf16(v));
  return x;
}
std::vector<uint16_t> bits(const std::vector<float>& x) {
  std::vector<uint16_t> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = toBf16(x[i]);
  return y;
}
std::vector<float> unbits(const std::vector<uint16_t>& x) {
  std::vector<float> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = bf16ToF(x[i]);
  return y;
}

// softmax(Q·Kᵀ·scale + causal/segment mask)·V and its backward, written plainly in f64.
Ref reference(const Case& c, float scale, const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
              const std::vector<float>& dout, const std::vector<int32_t>& seg) {
  const int B = c.b, H = c.h, KH = c.kv, Sq = c.seq, D = c.d, G = H / KH;
  Ref r;
  r.out.assign(q.size(), 0); r.aOut.assign(q.size(), 0); r.lse.assign(size_t(B) * H * Sq, 0);
  r.dq.assign(q.size(), 0); r.aDq.assign(q.size(), 0);
  r.dk.assign(k.size(), 0); r.aDk.assign(k.size(), 0); r.dv.assign(v.size(), 0); r.aDv.assign(v.size(), 0);
  std::vector<double> P(Sq), dP(Sq);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const int kh = h / G;
      const float* Q = &q[size_t(b * H + h) * Sq * D];
      const float* K = &k[size_t(b * KH + kh) * Sq * D];
      const float* V = &v[size_t(b * KH + kh) * Sq * D];
      const float* dO = &dout[size_t(b * H + h) * Sq * D];
      for (int i = 0; i < Sq; ++i) {
        double m = -INFINITY;
        for (int j = 0; j < Sq; ++j) {
          double s = -INFINITY;
          if (j <= i && seg[b * Sq + j] == seg[b * Sq + i]) {
            s = 0;
            for (int d = 0; d < D; ++d) s += double(Q[i * D + d]) * K[j * D + d];
            s *= scale;
          }
          P[j] = s;
          m = std::max(m, s);
        }
        double l = 0;
        for (int j = 0; j < Sq; ++j) { P[j] = std::exp(P[j] - m); l += P[j]; }
        for (int j = 0; j < Sq; ++j) P[j] /= l;
        const size_t row = (size_t(b) * H + h) * Sq + i;
        r.lse[row] = m + std::log(l);
        double delta = 0, deltaA = 0;
        for (int d = 0; d < D; ++d) {
          double o = 0, oa = 0;
          for (int j = 0; j < Sq; ++j) { o += P[j] * V[j * D + d]; oa += P[j] * std::fabs(V[j * D + d]); }
          r.out[row * D + d] = o;
          r.aOut[row * D + d] = oa;
          delta += o * dO[i * D + d];
          deltaA += oa * std::fabs(dO[i * D + d]);
        }
        for (int j = 0; j < Sq; ++j) {
          if (P[j] == 0) continue;
          double dp = 0;
          for (int d = 0; d < D; ++d) dp += double(dO[i * D + d]) * V[j * D + d];
          const double ds = P[j] * (dp - delta), dsA = P[j] * (std::fabs(dp) + deltaA);
          const size_t kvRow = (size_t(b) * KH + kh) * Sq + j;
          for (int d = 0; d < D; ++d) {
            r.dq[row * D + d] += scale * ds * K[j * D + d];
            r.aDq[row * D + d] += scale * dsA * std::fabs(K[j * D + d]);
            r.dk[kvRow * D + d] += scale * ds * Q[i * D + d];
            r.aDk[kvRow * D + d] += scale * dsA * std::fabs(Q[i * D + d]);
            r.dv[kvRow * D + d] += P[j] * dO[i * D + d];
            r.aDv[kvRow * D + d] += P[j] * std::fabs(dO[i * D + d]);
          }
        }
      }
    }
  return r;
}

// |got − ref| ≤ relA·A + relRef·|ref| + 1e-6 elementwise, and ‖got − ref‖₂ ≤ l2·‖ref‖₂.
void checkBound(const std::string& name, const std::vector<float>& got, const std::vector<double>& want,
                const std::vector<double>& absSum, double relA, double relRef, double l2) {
  Cmp c;
  double e2 = 0, r2 = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double e = std::fabs(double(got[i]) - want[i]);
    c.maxErr = std::max(c.maxErr, e);
    c.maxRef = std::max(c.maxRef, std::fabs(want[i]));
    e2 += e * e;
    r2 += want[i] * want[i];
    if (!(e <= relA * absSum[i] + relRef * std::fabs(want[i]) + 1e-6) && c.bad < 0) {
      c.bad = int64_t(i); c.got = got[i]; c.want = want[i];
    }
  }
  reportCmp(name, c);
  const double rel = std::sqrt(e2 / std::max(r2, 1e-300));
  report(name + " relative L2", rel <= l2, fmt("%.3g", rel) + " (limit " + fmt("%.3g", l2) + ")");
}
void checkLse(const std::string& name, const std::vector<float>& got, const std::vector<double>& want) {
  reportCmp(name + " lse", compare(got, want, 2e-4, 1e-5));
}

constexpr double kTcA = 1.0 / 64, kTcRef = 1.0 / 256, kTcL2 = 1.0 / 64;    // bf16 tensor cores
constexpr double kSimtA = 1.0 / 8192, kSimtRef = 1e-5, kSimtL2 = 1e-4;     // f32 SIMT

void checkCase(const Case& c) {
  const std::string tag = "attention-tc b=" + std::to_string(c.b) + " h=" + std::to_string(c.h) + "/" + std::to_string(c.kv) +
                          " seq=" + std::to_string(c.seq) + " d=" + std::to_string(c.d) + (c.segments ? " segments" : "");
  guarded(tag, [&] {
    attentionTcSetSplits(0);
    AttentionArgs a;
    a.batch = c.b; a.heads = c.h; a.kvHeads = c.kv; a.seq = c.seq; a.headDim = c.d; a.scale = 1.f / std::sqrt(float(c.d));
    const size_t qn = size_t(c.b) * c.h * c.seq * c.d, kn = size_t(c.b) * c.kv * c.seq * c.d, rows = size_t(c.b) * c.h * c.seq;
    const std::vector<float> q = bf16Rounded(randn(qn)), k = bf16Rounded(randn(kn)), v = bf16Rounded(randn(kn));
    const std::vector<float> dout = bf16Rounded(randn(qn));
    std::vector<int32_t> seg(size_t(c.b) * c.seq, 0);
    if (c.segments)  // segment boundaries that cross the 64-row tiles differently per batch row
      for (int b = 0; b < c.b; ++b)
        for (int i = 0; i < c.seq; ++i) seg[size_t(b) * c.seq + i] = i / (b % 2 ? 70 : 50);
    const Ref r = reference(c, a.scale, q, k, v, dout, seg);
    int32_t* dseg = up(seg);
    if (c.segments) a.segmentIds = dseg;
    std::vector<void*> owned{dseg};
    auto keep = [&](void* p) { owned.push_back(p); return p; };

    // 1) TC, all bf16 (attentionForwardBf16 / attentionBackwardBf16).
    uint16_t *q16 = up(bits(q)), *k16 = up(bits(k)), *v16 = up(bits(v)), *do16 = up(bits(dout));
    for (void* p : {(void*)q16, (void*)k16, (void*)v16, (void*)do16}) keep(p);
    uint16_t* o16 = static_cast<uint16_t*>(keep(dalloc<uint16_t>(qn)));
    float* lse = static_cast<float*>(keep(dalloc<float>(rows)));
    uint16_t *gq16 = static_cast<uint16_t*>(keep(dalloc<uint16_t>(qn))), *gk16 = static_cast<uint16_t*>(keep(dalloc<uint16_t>(kn))),
             *gv16 = static_cast<uint16_t*>(keep(dalloc<uint16_t>(kn)));
    void* scratch = keep(dalloc<char>(attentionTcScratchBytes(a, true, BF16)));
    attentionForwardBf16(S(), a, q16, k16, v16, o16, lse);
    attentionBackwardBf16(S(), a, do16, q16, k16, v16, o16, lse, gq16, gk16, gv16, scratch);
    checkBound(tag + " TC bf16 out", unbits(down(o16, qn)), r.out, r.aOut, kTcA, kTcRef, kTcL2);
    checkLse(tag + " TC bf16", down(lse, rows), r.lse);
    checkBound(tag + " TC bf16 dq", unbits(down(gq16, qn)), r.dq, r.aDq, kTcA, kTcRef, kTcL2);
    checkBound(tag + " TC bf16 dk", unbits(down(gk16, kn)), r.dk, r.aDk, kTcA, kTcRef, kTcL2);
    checkBound(tag + " TC bf16 dv", unbits(down(gv16, kn)), r.dv, r.aDv, kTcA, kTcRef, kTcL2);
    // Both dK/dV schemes: one block per group (registers only) and one block per query head (partials + reduce).
    for (int forced : {1, c.h / c.kv}) {
      attentionTcSetSplits(forced);
      void* sp = dalloc<char>(attentionTcScratchBytes(a, true, BF16));
      attentionBackwardBf16(S(), a, do16, q16, k16, v16, o16, lse, gq16, gk16, gv16, sp);
      const std::string sub = tag + " TC bf16 splits=" + std::to_string(forced);
      checkBound(sub + " dk", unbits(down(gk16, kn)), r.dk, r.aDk, kTcA, kTcRef, kTcL2);
      checkBound(sub + " dv", unbits(down(gv16, kn)), r.dv, r.aDv, kTcA, kTcRef, kTcL2);
      dfree(sp);
    }
    attentionTcSetSplits(0);
    attentionBackwardBf16(S(), a, do16, q16, k16, v16, o16, lse, gq16, gk16, gv16, scratch);
    {  // the backward has no atomics: a second run must give the same bits
      const std::vector<uint16_t> k1 = down(gk16, kn), q1 = down(gq16, qn);
      attentionBackwardBf16(S(), a, do16, q16, k16, v16, o16, lse, gq16, gk16, gv16, scratch);
      report(tag + " TC backward deterministic (dq, dk bitwise)", k1 == down(gk16, kn) && q1 == down(gq16, qn));
    }

    // 2) TC with f32 buffers (the entry the layer benchmark and the f32 backend path use): f32 outputs.
    float *qf = up(q), *kf = up(k), *vf = up(v), *dof = up(dout);
    for (void* p : {(void*)qf, (void*)kf, (void*)vf, (void*)dof}) keep(p);
    float *of = static_cast<float*>(keep(dalloc<float>(qn))), *lsef = static_cast<float*>(keep(dalloc<float>(rows)));
    float *gqf = static_cast<float*>(keep(dalloc<float>(qn))), *gkf = static_cast<float*>(keep(dalloc<float>(kn))),
          *gvf = static_cast<float*>(keep(dalloc<float>(kn)));
    const size_t scratchF = std::max(attentionTcScratchBytes(a, false, F32), attentionTcScratchBytes(a, true, F32));
    void* sf = keep(dalloc<char>(scratchF));
    attentionForwardTc(S(), a, F32, qf, kf, vf, F32, of, lsef, sf);
    attentionBackwardTc(S(), a, F32, dof, qf, kf, vf, F32, of, lsef, F32, gqf, gkf, gvf, sf);
    const std::vector<float> tcOut = down(of, qn), tcDq = down(gqf, qn), tcDk = down(gkf, kn), tcDv = down(gvf, kn);
    checkBound(tag + " TC f32-io out", tcOut, r.out, r.aOut, kTcA, kTcRef, kTcL2);
    checkLse(tag + " TC f32-io", down(lsef, rows), r.lse);
    checkBound(tag + " TC f32-io dq", tcDq, r.dq, r.aDq, kTcA, kTcRef, kTcL2);
    checkBound(tag + " TC f32-io dk", tcDk, r.dk, r.aDk, kTcA, kTcRef, kTcL2);
    checkBound(tag + " TC f32-io dv", tcDv, r.dv, r.aDv, kTcA, kTcRef, kTcL2);

    // 3) The SIMT fallback on the same bf16-rounded values, against the reference and against TC.
    float *os = static_cast<float*>(keep(dalloc<float>(qn))), *lses = static_cast<float*>(keep(dalloc<float>(rows)));
    float *gqs = static_cast<float*>(keep(dalloc<float>(qn))), *gks = static_cast<float*>(keep(dalloc<float>(kn))),
          *gvs = static_cast<float*>(keep(dalloc<float>(kn))), *ss = static_cast<float*>(keep(dalloc<float>(rows)));
    attentionForward(S(), a, qf, kf, vf, os, lses);
    attentionBackward(S(), a, dof, qf, kf, vf, os, lses, gqs, gks, gvs, ss);
    const std::vector<float> sOut = down(os, qn), sDq = down(gqs, qn), sDk = down(gks, kn), sDv = down(gvs, kn);
    checkBound(tag + " SIMT out", sOut, r.out, r.aOut, kSimtA, kSimtRef, kSimtL2);
    checkLse(tag + " SIMT", down(lses, rows), r.lse);
    checkBound(tag + " SIMT dq", sDq, r.dq, r.aDq, kSimtA, kSimtRef, kSimtL2);
    checkBound(tag + " SIMT dk", sDk, r.dk, r.aDk, kSimtA, kSimtRef, kSimtL2);
    checkBound(tag + " SIMT dv", sDv, r.dv, r.aDv, kSimtA, kSimtRef, kSimtL2);
    auto asD = [](const std::vector<float>& x) { return std::vector<double>(x.begin(), x.end()); };
    checkBound(tag + " TC vs SIMT out", tcOut, asD(sOut), r.aOut, kTcA, kTcRef, kTcL2);
    checkBound(tag + " TC vs SIMT dq", tcDq, asD(sDq), r.aDq, kTcA, kTcRef, kTcL2);
    checkBound(tag + " TC vs SIMT dk", tcDk, asD(sDk), r.aDk, kTcA, kTcRef, kTcL2);
    checkBound(tag + " TC vs SIMT dv", tcDv, asD(sDv), r.aDv, kTcA, kTcRef, kTcL2);
    for (void* p : owned) dfree(p);
  });
}

void check() {
  std::printf("attention-tc: bf16 tensor-core flash attention vs CPU f64 reference (and the SIMT path)\n");
  if (!attentionTcSupported([] { AttentionArgs a{}; a.heads = a.kvHeads = 1; a.headDim = 128; return a; }())) {
    report("attention-tc: device supports the TC path (sm_80+)", false);
    return;
  }
  checkCase({1, 4, 2, 37, 64, false});
  checkCase({2, 8, 2, 200, 128, true});
  checkCase({1, 4, 4, 513, 128, false});
}

// Causal FLOPs: forward 2·2·b·h·seq²·d / 2; backward 2.5× that.
void bench() {
  Timer t;
  for (int seq : {2048, 8192}) {
    AttentionArgs a;
    a.batch = 1; a.heads = 32; a.kvHeads = 8; a.seq = seq; a.headDim = 128; a.scale = 1.f / std::sqrt(128.f);
    const size_t qn = size_t(a.heads) * seq * 128, kn = size_t(a.kvHeads) * seq * 128, rows = size_t(a.heads) * seq;
    const double fwdFlops = 2.0 * a.heads * double(seq) * seq * 128, allFlops = 3.5 * fwdFlops;
    std::vector<void*> owned;
    auto mk = [&](size_t bytes) { void* p = dalloc<char>(bytes); owned.push_back(p); return p; };
    auto* q16 = static_cast<uint16_t*>(mk(qn * 2)); auto* k16 = static_cast<uint16_t*>(mk(kn * 2));
    auto* v16 = static_cast<uint16_t*>(mk(kn * 2)); auto* do16 = static_cast<uint16_t*>(mk(qn * 2));
    auto* o16 = static_cast<uint16_t*>(mk(qn * 2)); auto* gq16 = static_cast<uint16_t*>(mk(qn * 2));
    auto* gk16 = static_cast<uint16_t*>(mk(kn * 2)); auto* gv16 = static_cast<uint16_t*>(mk(kn * 2));
    auto* lse = static_cast<float*>(mk(rows * 4));
    void* scratch = mk(attentionTcScratchBytes(a, true, BF16));
    {
      const std::vector<float> hq = randn(qn), hk = randn(kn), hv = randn(kn), hd = randn(qn);
      rt().upload(q16, bits(hq).data(), qn * 2); rt().upload(k16, bits(hk).data(), kn * 2);
      rt().upload(v16, bits(hv).data(), kn * 2); rt().upload(do16, bits(hd).data(), qn * 2);
    }
    const double tcF = t.median(5, [&] { attentionForwardBf16(S(), a, q16, k16, v16, o16, lse); });
    const double tcFB = t.median(5, [&] {
      attentionForwardBf16(S(), a, q16, k16, v16, o16, lse);
      attentionBackwardBf16(S(), a, do16, q16, k16, v16, o16, lse, gq16, gk16, gv16, scratch);
    });
    // SIMT peer on f32 copies of the same values.
    auto* qf = static_cast<float*>(mk(qn * 4)); auto* kf = static_cast<float*>(mk(kn * 4)); auto* vf = static_cast<float*>(mk(kn * 4));
    auto* dof = static_cast<float*>(mk(qn * 4)); auto* of = static_cast<float*>(mk(qn * 4)); auto* gqf = static_cast<float*>(mk(qn * 4));
    auto* gkf = static_cast<float*>(mk(kn * 4)); auto* gvf = static_cast<float*>(mk(kn * 4)); auto* ss = static_cast<float*>(mk(rows * 4));
    View flat;
    flat.rank = 1; flat.strides[0] = 1;
    flat.shape[0] = int64_t(qn);
    copyStrided(S(), q16, BF16, flat, qf, F32); copyStrided(S(), do16, BF16, flat, dof, F32);
    flat.shape[0] = int64_t(kn);
    copyStrided(S(), k16, BF16, flat, kf, F32); copyStrided(S(), v16, BF16, flat, vf, F32);
    const int reps = seq > 4096 ? 1 : 3;  // the SIMT path takes 10s of ms at 8192
    const double sF = t.median(reps, [&] { attentionForward(S(), a, qf, kf, vf, of, lse); });
    const double sFB = t.median(reps, [&] {
      attentionForward(S(), a, qf, kf, vf, of, lse);
      attentionBackward(S(), a, dof, qf, kf, vf, of, lse, gqf, gkf, gvf, ss);
    });
    const std::string shape = "seq " + std::to_string(seq) + ", 32/8 heads, d=128, causal";
    auto tf = [](double flops, double ms) { return flops / (ms * 1e-3) / 1e12; };
    gTable.push_back({"attention fwd bf16 TC (" + shape + ")", fmt("%.3f ms", tcF) + fmt(" (%.0f TFLOP/s)", tf(fwdFlops, tcF)),
                      "SIMT f32 " + fmt("%.3f ms", sF) + fmt(" (%.1f TFLOP/s)", tf(fwdFlops, sF)), fmt("%.1fx", sF / tcF),
                      "FLOPs 2·b·h·seq²·d"});
    gTable.push_back({"attention fwd+bwd bf16 TC (" + shape + ")", fmt("%.3f ms", tcFB) + fmt(" (%.0f TFLOP/s)", tf(allFlops, tcFB)),
                      "SIMT f32 " + fmt("%.3f ms", sFB) + fmt(" (%.1f TFLOP/s)", tf(allFlops, sFB)), fmt("%.1fx", sFB / tcFB),
                      "FLOPs 3.5× forward"});
    for (void* p : owned) dfree(p);
  }
}

qk::harness::Register reg("attention-tc", check, bench);

}  // namespace
