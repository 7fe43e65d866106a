// Host emulation of the index and fragment math of csrc/kernels/attention_tc.cu: swizzled cp.async tile loads
// (zero-fill past seq), ldmatrix / ldmatrix.trans addresses, mma.m16n8k16 bf16 fragments (as the PTX ISA defines
// them), toA register reuse, causal/segment masks, the log2-domain online softmax, the dQ kernel and the dK/dV
// kernel with and without head splits (partials + ordered sum) — against an f64 reference, with the per-element
// bound of dev/check_attention_tc.cu (2^-6·A + 2^-8·|ref| + 1e-6) and relative L2. Warps run one after another on
// the shared tile; it does not model the cp.async pipeline's synchronisation (smem stages start as NaN, so a read
// of a stage that was never loaded shows). Formulas are hand-copied from the kernels: keep them in sync.
// Run: g++ -O2 -std=c++17 dev/emulate_attention_tc.cpp -o /tmp/emu-att && /tmp/emu-att   (prints ALL PASS)
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>
#include <algorithm>

#include "emulate_ptx.h"
using u32 = uint32_t; using u16 = uint16_t;
static u32 pack(float l, float h) { return u32(tobf(l)) | (u32(tobf(h)) << 16); }
constexpr int kBlk = 64, kThreads = 128;
constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;
template <int D> int sw(int r, int c) { return r * D + ((c ^ (r & 7)) << 3); }
// ldmatrix with per-lane element offsets into the shared tile (the model is emulate_ptx.h's ldsm).
static void ldsm4(u32 r[32][4], const u16* s, const int off[32], bool trans) {
  const u16* addr[32];
  for (int lane = 0; lane < 32; ++lane) addr[lane] = s + off[lane];
  ldsm(addr, trans, r);
}
template <int D> void ldA(u32 a[32][4], const u16* s, int r0, int c0) {
  int off[32]; for (int lane = 0; lane < 32; ++lane) { const int r = r0 + (lane & 7) + ((lane >> 3) & 1) * 8, c = c0 + (lane >> 4); off[lane] = sw<D>(r, c); }
  ldsm4(a, s, off, false);
}
template <int D> void ldB(u32 b[32][4], const u16* s, int n0, int c0) {
  int off[32]; for (int lane = 0; lane < 32; ++lane) { const int r = n0 + (lane & 7) + (lane >> 4) * 8, c = c0 + ((lane >> 3) & 1); off[lane] = sw<D>(r, c); }
  ldsm4(b, s, off, false);
}
template <int D> void ldBT(u32 b[32][4], const u16* s, int k0, int c0) {
  int off[32]; for (int lane = 0; lane < 32; ++lane) { const int r = k0 + (lane & 7) + ((lane >> 3) & 1) * 8, c = c0 + (lane >> 4); off[lane] = sw<D>(r, c); }
  ldsm4(b, s, off, true);
}
static void toA(u32 a[32][4], float l[32][4], float h[32][4]) {
  for (int lane = 0; lane < 32; ++lane) { a[lane][0] = pack(l[lane][0], l[lane][1]); a[lane][1] = pack(l[lane][2], l[lane][3]); a[lane][2] = pack(h[lane][0], h[lane][1]); a[lane][3] = pack(h[lane][2], h[lane][3]); }
}
static void col(u32 out[32], u32 b[32][4], int i) { for (int l = 0; l < 32; ++l) out[l] = b[l][i]; }
template <int D> void loadTile(u16* s, const u16* g, int row0, int seq) {
  std::vector<int> seen(kBlk * D, 0);
  for (int e = 0; e < kBlk * (D / 8); ++e) {
    const int r = e / (D / 8), c = e % (D / 8); const bool ok = row0 + r < seq;
    for (int x = 0; x < 8; ++x) { s[sw<D>(r, c) + x] = ok ? g[int64_t(row0 + r) * D + c * 8 + x] : 0; seen[sw<D>(r, c) + x]++; }
  }
  for (int x : seen) if (x != 1) { printf("swizzle not a permutation\n"); exit(1); }
}
struct Args { int batch, heads, kvHeads, seq, headDim; float scale; const int32_t* seg; };
struct Mask { const int32_t* seg; int seq; bool ok(int i, int j) const { return j <= i && i < seq && (seg == nullptr || seg[j] == seg[i]); } };
static float quadMax(float v[32], int lane) { int b = lane & ~3; return std::max(std::max(v[b], v[b + 1]), std::max(v[b + 2], v[b + 3])); }
static float quadSum(float v[32], int lane) { int b = lane & ~3; return (v[b] + v[b + 1]) + (v[b + 2] + v[b + 3]); }
typedef float F4[32][4];
// queryTile of the kernel for block (bx, query tile qTile).
struct QueryTile { int qTile, bh, q0; const u16 *kh, *vh; Mask mask; };
template <int D> QueryTile queryTile(const Args& a, const u16* k, const u16* v, int bx, int qTile) {
  const int bh = bx, b = bh / a.heads, kvh = (bh % a.heads) / (a.heads / a.kvHeads);
  const int64_t kvOff = (int64_t(b) * a.kvHeads + kvh) * a.seq * D;
  return {qTile, bh, qTile * kBlk, k + kvOff, v + kvOff, Mask{a.seg ? a.seg + int64_t(b) * a.seq : nullptr, a.seq}};
}
template <int D> void fwd(const Args& a, const u16* q, const u16* k, const u16* v, float* out, float* lse) {
  constexpr int T = kBlk * D, KS = D / 16;
  const int nQ = (a.seq + kBlk - 1) / kBlk;
  for (int bx = 0; bx < a.batch * a.heads; ++bx)
    for (int by = 0; by < nQ; ++by) {
      const auto [qTile, bh, q0, kh, vh, mask] = queryTile<D>(a, k, v, bx, nQ - 1 - by);
      std::vector<u16> sm(4 * T, 0x7fc0); u16* smem = sm.data();
      loadTile<D>(smem + 2 * T, q + int64_t(bh) * a.seq * D, q0, a.seq);
      loadTile<D>(smem, kh, 0, a.seq); loadTile<D>(smem + T, vh, 0, a.seq);
      static u32 qf[4][KS][32][4];
      for (int w = 0; w < 4; ++w) for (int kk = 0; kk < KS; ++kk) ldA<D>(qf[w][kk], smem + 2 * T, 16 * w, 2 * kk);
      std::fill(smem + 2 * T, smem + 4 * T, 0x7fc0);
      const float sl2 = a.scale * kLog2e;
      static float o[4][D / 8][32][4]; static float m[4][32][2], l[4][32][2];
      for (int w = 0; w < 4; ++w) for (int lane = 0; lane < 32; ++lane) { for (int dt = 0; dt < D / 8; ++dt) for (int c = 0; c < 4; ++c) o[w][dt][lane][c] = 0; m[w][lane][0] = m[w][lane][1] = -INFINITY; l[w][lane][0] = l[w][lane][1] = 0; }
      const int nTiles = qTile + 1;
      for (int t = 0; t < nTiles; ++t) {
        if (t + 1 < nTiles) { u16* st = smem + 2 * T * ((t + 1) & 1); loadTile<D>(st, kh, (t + 1) * kBlk, a.seq); loadTile<D>(st + T, vh, (t + 1) * kBlk, a.seq); }
        const u16* sK = smem + 2 * T * (t & 1); const u16* sV = sK + T; const int k0 = t * kBlk;
        for (int w = 0; w < 4; ++w) {
          static float s[8][32][4]; memset(s, 0, sizeof s);
          for (int kk = 0; kk < KS; ++kk) for (int np = 0; np < 4; ++np) {
            u32 bb[32][4], c0[32], c1[32], c2[32], c3[32]; ldB<D>(bb, sK, 16 * np, 2 * kk);
            col(c0, bb, 0); col(c1, bb, 1); col(c2, bb, 2); col(c3, bb, 3);
            mma(s[2 * np], qf[w][kk], c0, c1); mma(s[2 * np + 1], qf[w][kk], c2, c3);
          }
          const bool needMask = t == qTile || mask.seg != nullptr;
          for (int hh = 0; hh < 2; ++hh) {
            float mx[32];
            for (int lane = 0; lane < 32; ++lane) {
              const int g = lane >> 2, t4 = lane & 3, row = q0 + 16 * w + g;
              mx[lane] = -INFINITY;
              for (int nt = 0; nt < 8; ++nt) for (int e = 0; e < 2; ++e) {
                float& x = s[nt][lane][2 * hh + e];
                x = needMask && !mask.ok(row + 8 * hh, k0 + 8 * nt + 2 * t4 + e) ? -INFINITY : x * sl2;
                mx[lane] = fmaxf(mx[lane], x);
              }
            }
            for (int lane = 0; lane < 32; ++lane) {
              const float mNew = fmaxf(m[w][lane][hh], quadMax(mx, lane));
              const float mRef = mNew == -INFINITY ? 0.f : mNew;
              const float corr = exp2f(m[w][lane][hh] - mRef);
              m[w][lane][hh] = mNew;
              float sum = 0;
              for (int nt = 0; nt < 8; ++nt) for (int e = 0; e < 2; ++e) { float& x = s[nt][lane][2 * hh + e]; x = exp2f(x - mRef); sum += x; }
              l[w][lane][hh] = l[w][lane][hh] * corr + sum;
              for (int dt = 0; dt < D / 8; ++dt) { o[w][dt][lane][2 * hh] *= corr; o[w][dt][lane][2 * hh + 1] *= corr; }
            }
          }
          for (int kk = 0; kk < 4; ++kk) {
            u32 pa[32][4]; toA(pa, s[2 * kk], s[2 * kk + 1]);
            for (int dp = 0; dp < D / 16; ++dp) {
              u32 bb[32][4], c0[32], c1[32], c2[32], c3[32]; ldBT<D>(bb, sV, 16 * kk, 2 * dp);
              col(c0, bb, 0); col(c1, bb, 1); col(c2, bb, 2); col(c3, bb, 3);
              mma(o[w][2 * dp], pa, c0, c1); mma(o[w][2 * dp + 1], pa, c2, c3);
            }
          }
        }
      }
      for (int w = 0; w < 4; ++w) for (int hh = 0; hh < 2; ++hh) {
        float lv[32]; for (int lane = 0; lane < 32; ++lane) lv[lane] = l[w][lane][hh];
        for (int lane = 0; lane < 32; ++lane) {
          const int g = lane >> 2, t4 = lane & 3, i = q0 + 16 * w + g + 8 * hh;
          const float lt = quadSum(lv, lane);
          if (i >= a.seq) continue;
          const float inv = 1.0f / lt;
          float* orow = out + (int64_t(bh) * a.seq + i) * D + 2 * t4;
          for (int dt = 0; dt < D / 8; ++dt) { orow[8 * dt] = o[w][dt][lane][2 * hh] * inv; orow[8 * dt + 1] = o[w][dt][lane][2 * hh + 1] * inv; }
          if (t4 == 0) lse[int64_t(bh) * a.seq + i] = (m[w][lane][hh] + log2f(lt)) * kLn2;
        }
      }
    }
}

template <int D> void dqk(const Args& a, const u16* q, const u16* k, const u16* v, const u16* dout, const float* lse, const float* delta, float* dq) {
  constexpr int T = kBlk * D, KS = D / 16;
  const int nQ = (a.seq + kBlk - 1) / kBlk;
  for (int bx = 0; bx < a.batch * a.heads; ++bx)
    for (int by = 0; by < nQ; ++by) {
      const auto [qTile, bh, q0, kh, vh, mask] = queryTile<D>(a, k, v, bx, nQ - 1 - by);
      std::vector<u16> sm(4 * T, 0x7fc0); u16* smem = sm.data();
      loadTile<D>(smem + 2 * T, q + int64_t(bh) * a.seq * D, q0, a.seq);
      loadTile<D>(smem + 3 * T, dout + int64_t(bh) * a.seq * D, q0, a.seq);
      loadTile<D>(smem, kh, 0, a.seq); loadTile<D>(smem + T, vh, 0, a.seq);
      static u32 qf[4][KS][32][4], df[4][KS][32][4];
      for (int w = 0; w < 4; ++w) for (int kk = 0; kk < KS; ++kk) { ldA<D>(qf[w][kk], smem + 2 * T, 16 * w, 2 * kk); ldA<D>(df[w][kk], smem + 3 * T, 16 * w, 2 * kk); }
      std::fill(smem + 2 * T, smem + 4 * T, 0x7fc0);
      const float sl2 = a.scale * kLog2e;
      static float acc[4][D / 8][32][4]; memset(acc, 0, sizeof acc);
      const int nTiles = qTile + 1;
      for (int t = 0; t < nTiles; ++t) {
        if (t + 1 < nTiles) { u16* st = smem + 2 * T * ((t + 1) & 1); loadTile<D>(st, kh, (t + 1) * kBlk, a.seq); loadTile<D>(st + T, vh, (t + 1) * kBlk, a.seq); }
        const u16* sK = smem + 2 * T * (t & 1); const u16* sV = sK + T;
        const bool needMask = t == qTile || mask.seg != nullptr;
        for (int w = 0; w < 4; ++w)
          for (int half = 0; half < 2; ++half) {
            const int n0 = 32 * half, k0 = t * kBlk + n0;
            static float s[4][32][4], dp[4][32][4]; memset(s, 0, sizeof s); memset(dp, 0, sizeof dp);
            for (int kk = 0; kk < KS; ++kk) for (int np = 0; np < 2; ++np) {
              u32 bb[32][4], c0[32], c1[32], c2[32], c3[32];
              ldB<D>(bb, sK, n0 + 16 * np, 2 * kk); col(c0, bb, 0); col(c1, bb, 1); col(c2, bb, 2); col(c3, bb, 3);
              mma(s[2 * np], qf[w][kk], c0, c1); mma(s[2 * np + 1], qf[w][kk], c2, c3);
              ldB<D>(bb, sV, n0 + 16 * np, 2 * kk); col(c0, bb, 0); col(c1, bb, 1); col(c2, bb, 2); col(c3, bb, 3);
              mma(dp[2 * np], df[w][kk], c0, c1); mma(dp[2 * np + 1], df[w][kk], c2, c3);
            }
            for (int lane = 0; lane < 32; ++lane) {
              const int g = lane >> 2, t4 = lane & 3, row = q0 + 16 * w + g;
              float lse2[2], dl[2];
              for (int hh = 0; hh < 2; ++hh) { const int i = row + 8 * hh; lse2[hh] = i < a.seq ? lse[int64_t(bh) * a.seq + i] * kLog2e : 0.f; dl[hh] = i < a.seq ? delta[int64_t(bh) * a.seq + i] : 0.f; }
              for (int nt = 0; nt < 4; ++nt) for (int c = 0; c < 4; ++c) {
                const int hh = c >> 1, i = row + 8 * hh, j = k0 + 8 * nt + 2 * t4 + (c & 1);
                const float p = needMask && !mask.ok(i, j) ? 0.f : exp2f(s[nt][lane][c] * sl2 - lse2[hh]);
                s[nt][lane][c] = p * (dp[nt][lane][c] - dl[hh]);
              }
            }
            for (int kk = 0; kk < 2; ++kk) {
              u32 da[32][4]; toA(da, s[2 * kk], s[2 * kk + 1]);
              for (int d2 = 0; d2 < D / 16; ++d2) {
                u32 bb[32][4], c0[32], c1[32], c2[32], c3[32]; ldBT<D>(bb, sK, n0 + 16 * kk, 2 * d2);
                col(c0, bb, 0); col(c1, bb, 1); col(c2, bb, 2); col(c3, bb, 3);
                mma(acc[w][2 * d2], da, c0, c1); mma(acc[w][2 * d2 + 1], da, c2, c3);
              }
            }
          }
      }
      for (int w = 0; w < 4; ++w) for (int lane = 0; lane < 32; ++lane) for (int hh = 0; hh < 2; ++hh) {
        const int g = lane >> 2, t4 = lane & 3, i = q0 + 16 * w + g + 8 * hh;
        if (i >= a.seq) continue;
        float* drow = dq + (int64_t(bh) * a.seq + i) * D + 2 * t4;
        for (int dt = 0; dt < D / 8; ++dt) { drow[8 * dt] = acc[w][dt][lane][2 * hh] * a.scale; drow[8 * dt + 1] = acc[w][dt][lane][2 * hh + 1] * a.scale; }
      }
    }
}

template <int D> void dkvk(const Args& a, int splits, const u16* q, const u16* k, const u16* v, const u16* dout, const float* lse, const float* delta, float* dk, float* dv) {
  constexpr int T = kBlk * D, KS = D / 16;
  const int nQ = (a.seq + kBlk - 1) / kBlk;
  const int64_t kvRows = int64_t(a.batch) * a.kvHeads * a.seq;
  std::vector<float> part(size_t(2) * splits * kvRows * D, NAN);
  for (int bx = 0; bx < a.batch * a.kvHeads * splits; ++bx)
    for (int kTile = 0; kTile < nQ; ++kTile) {
      const int k0 = kTile * kBlk, split = bx % splits, bkv = bx / splits;
      const int b = bkv / a.kvHeads, kvh = bkv % a.kvHeads, group = a.heads / a.kvHeads, per = group / splits;
      const int h0 = kvh * group + split * per, qPer = nQ - kTile, items = per * qPer;
      const Mask mask{a.seg ? a.seg + int64_t(b) * a.seq : nullptr, a.seq};
      std::vector<u16> sm(6 * T, 0x7fc0); u16* smem = sm.data();
      float stats[256]; for (float& x : stats) x = NAN;
      auto issue = [&](int it, int st) {
        const int64_t bh = int64_t(b) * a.heads + h0 + it / qPer; const int i0 = (kTile + it % qPer) * kBlk;
        loadTile<D>(smem + 2 * T + 2 * T * st, q + bh * a.seq * D, i0, a.seq);
        loadTile<D>(smem + 3 * T + 2 * T * st, dout + bh * a.seq * D, i0, a.seq);
        for (int tid = 0; tid < kThreads; ++tid) {
          const int r = tid & 63, i = i0 + r;
          if (tid < 64) stats[128 * st + r] = i < a.seq ? lse[bh * a.seq + i] * kLog2e : 0.f;
          else stats[128 * st + 64 + r] = i < a.seq ? delta[bh * a.seq + i] : 0.f;
        }
      };
      loadTile<D>(smem, k + int64_t(bkv) * a.seq * D, k0, a.seq);
      loadTile<D>(smem + T, v + int64_t(bkv) * a.seq * D, k0, a.seq);
      issue(0, 0);
      const float sl2 = a.scale * kLog2e;
      static float accK[4][D / 8][32][4], accV[4][D / 8][32][4]; memset(accK, 0, sizeof accK); memset(accV, 0, sizeof accV);
      for (int it = 0; it < items; ++it) {
        if (it + 1 < items) issue(it + 1, (it + 1) & 1);
        const int st = it & 1, i0 = (kTile + it % qPer) * kBlk;
        const u16* sQ = smem + 2 * T + 2 * T * st; const u16* sO = sQ + T;
        const float* sL = stats + 128 * st; const float* sD = sL + 64;
        const bool needMask = i0 == k0 || i0 + kBlk > a.seq || mask.seg != nullptr;
        for (int w = 0; w < 4; ++w)
          for (int half = 0; half < 2; ++half) {
            const int n0 = 32 * half;
            static float s[4][32][4], dp[4][32][4]; memset(s, 0, sizeof s); memset(dp, 0, sizeof dp);
            for (int kk = 0; kk < KS; ++kk) {
              u32 ka[32][4], va[32][4]; ldA<D>(ka, smem, 16 * w, 2 * kk); ldA<D>(va, smem + T, 16 * w, 2 * kk);
              for (int np = 0; np < 2; ++np) {
                u32 bb[32][4], c0[32], c1[32], c2[32], c3[32];
                ldB<D>(bb, sQ, n0 + 16 * np, 2 * kk); col(c0, bb, 0); col(c1, bb, 1); col(c2, bb, 2); col(c3, bb, 3);
                mma(s[2 * np], ka, c0, c1); mma(s[2 * np + 1], ka, c2, c3);
                ldB<D>(bb, sO, n0 + 16 * np, 2 * kk); col(c0, bb, 0); col(c1, bb, 1); col(c2, bb, 2); col(c3, bb, 3);
                mma(dp[2 * np], va, c0, c1); mma(dp[2 * np + 1], va, c2, c3);
              }
            }
            for (int lane = 0; lane < 32; ++lane) {
              const int g = lane >> 2, t4 = lane & 3, key = k0 + 16 * w + g;
              for (int nt = 0; nt < 4; ++nt) for (int c = 0; c < 4; ++c) {
                const int cl = n0 + 8 * nt + 2 * t4 + (c & 1), j = key + 8 * (c >> 1);
                const float p = needMask && !mask.ok(i0 + cl, j) ? 0.f : exp2f(s[nt][lane][c] * sl2 - sL[cl]);
                s[nt][lane][c] = p; dp[nt][lane][c] = p * (dp[nt][lane][c] - sD[cl]);
              }
            }
            for (int kk = 0; kk < 2; ++kk) {
              u32 pa[32][4], da[32][4]; toA(pa, s[2 * kk], s[2 * kk + 1]); toA(da, dp[2 * kk], dp[2 * kk + 1]);
              for (int d2 = 0; d2 < D / 16; ++d2) {
                u32 bb[32][4], c0[32], c1[32], c2[32], c3[32];
                ldBT<D>(bb, sO, n0 + 16 * kk, 2 * d2); col(c0, bb, 0); col(c1, bb, 1); col(c2, bb, 2); col(c3, bb, 3);
                mma(accV[w][2 * d2], pa, c0, c1); mma(accV[w][2 * d2 + 1], pa, c2, c3);
                ldBT<D>(bb, sQ, n0 + 16 * kk, 2 * d2); col(c0, bb, 0); col(c1, bb, 1); col(c2, bb, 2); col(c3, bb, 3);
                mma(accK[w][2 * d2], da, c0, c1); mma(accK[w][2 * d2 + 1], da, c2, c3);
              }
            }
          }
      }
      for (int w = 0; w < 4; ++w) for (int lane = 0; lane < 32; ++lane) for (int hh = 0; hh < 2; ++hh) {
        const int g = lane >> 2, t4 = lane & 3, j = k0 + 16 * w + g + 8 * hh;
        if (j >= a.seq) continue;
        const int64_t off = (int64_t(bkv) * a.seq + j) * D + 2 * t4;
        for (int dt = 0; dt < D / 8; ++dt) for (int e = 0; e < 2; ++e) {
          const float kx = accK[w][dt][lane][2 * hh + e] * a.scale, vx = accV[w][dt][lane][2 * hh + e];
          if (splits > 1) { float* pk = part.data() + int64_t(split) * kvRows * D + off + 8 * dt + e; *pk = kx; pk[int64_t(splits) * kvRows * D] = vx; }
          else { dk[off + 8 * dt + e] = kx; dv[off + 8 * dt + e] = vx; }
        }
      }
    }
  if (splits > 1) {
    const int64_t n = kvRows * D;
    for (int64_t e = 0; e < n; ++e) { float x = 0, y = 0; for (int s = 0; s < splits; ++s) { x += part[s * n + e]; y += part[splits * n + s * n + e]; } dk[e] = x; dv[e] = y; }
  }
}

// ---------------- reference + driver
struct Case { int b, h, kv, seq, d; bool segments; int splits; };
static double l2rel(const std::vector<float>& got, const std::vector<double>& want, double* maxe, double* maxr) {
  double e2 = 0, r2 = 0; *maxe = 0; *maxr = 0;
  for (size_t i = 0; i < want.size(); ++i) { double e = std::fabs(got[i] - want[i]); if (std::isnan(got[i])) e = 1e30; e2 += e * e; r2 += want[i] * want[i]; *maxe = std::max(*maxe, e); *maxr = std::max(*maxr, std::fabs(want[i])); }
  return std::sqrt(e2 / std::max(r2, 1e-300));
}
int run(const Case& c) {
  std::mt19937 rng(c.seq * 7 + c.d + c.h);
  std::normal_distribution<float> nd;
  const int B = c.b, H = c.h, KH = c.kv, S = c.seq, D = c.d, G = H / KH;
  const size_t qn = size_t(B) * H * S * D, kn = size_t(B) * KH * S * D;
  std::vector<u16> q(qn), k(kn), v(kn), dO(qn);
  for (auto* t : {&q, &k, &v, &dO})
    for (auto& x : *t) x = tobf(nd(rng));
  std::vector<int32_t> seg(size_t(B) * S, 0);
  if (c.segments) for (int b = 0; b < B; ++b) for (int i = 0; i < S; ++i) seg[b * S + i] = i / (b % 2 ? 70 : 50);
  Args a{B, H, KH, S, D, 1.f / std::sqrt(float(D)), c.segments ? seg.data() : nullptr};
  // reference
  std::vector<double> rO(qn), rL(size_t(B) * H * S), rdq(qn), rdk(kn), rdv(kn), rdelta(size_t(B) * H * S);
  std::vector<double> P(S); std::vector<double> aO(qn), adq(qn), adk(kn), adv(kn);
  for (int b = 0; b < B; ++b) for (int h = 0; h < H; ++h) {
    const int kh = h / G;
    const u16* Q = &q[size_t(b * H + h) * S * D]; const u16* K = &k[size_t(b * KH + kh) * S * D]; const u16* V = &v[size_t(b * KH + kh) * S * D]; const u16* O = &dO[size_t(b * H + h) * S * D];
    for (int i = 0; i < S; ++i) {
      double m = -INFINITY;
      for (int j = 0; j < S; ++j) { double s = -INFINITY; if (j <= i && seg[b * S + j] == seg[b * S + i]) { s = 0; for (int d = 0; d < D; ++d) s += double(bf(Q[i * D + d])) * bf(K[j * D + d]); s *= a.scale; } P[j] = s; m = std::max(m, s); }
      double l = 0; for (int j = 0; j < S; ++j) { P[j] = std::exp(P[j] - m); l += P[j]; } for (int j = 0; j < S; ++j) P[j] /= l;
      const size_t row = (size_t(b) * H + h) * S + i; rL[row] = m + std::log(l);
      double delta = 0, deltaA = 0;
      for (int d = 0; d < D; ++d) { double o = 0, oa = 0; for (int j = 0; j < S; ++j) { o += P[j] * bf(V[j * D + d]); oa += P[j] * std::fabs(bf(V[j * D + d])); } rO[row * D + d] = o; aO[row * D + d] = oa; delta += o * bf(O[i * D + d]); deltaA += oa * std::fabs(bf(O[i * D + d])); }
      rdelta[row] = delta;
      for (int j = 0; j < S; ++j) { if (P[j] == 0) continue; double dp = 0; for (int d = 0; d < D; ++d) dp += double(bf(O[i * D + d])) * bf(V[j * D + d]);
        const double ds = P[j] * (dp - delta), dsA = P[j] * (std::fabs(dp) + deltaA); const size_t kvRow = (size_t(b) * KH + kh) * S + j;
        for (int d = 0; d < D; ++d) { rdq[row * D + d] += a.scale * ds * bf(K[j * D + d]); rdk[kvRow * D + d] += a.scale * ds * bf(Q[i * D + d]); rdv[kvRow * D + d] += P[j] * bf(O[i * D + d]);
          adq[row * D + d] += a.scale * dsA * std::fabs(bf(K[j * D + d])); adk[kvRow * D + d] += a.scale * dsA * std::fabs(bf(Q[i * D + d])); adv[kvRow * D + d] += P[j] * std::fabs(bf(O[i * D + d])); } }
    }
  }
  std::vector<float> out(qn, NAN), lse(size_t(B) * H * S, NAN), dq(qn, NAN), dk(kn, NAN), dv(kn, NAN), delta(rdelta.size());
  for (size_t i = 0; i < delta.size(); ++i) delta[i] = float(rdelta[i]);
  if (D == 64) fwd<64>(a, q.data(), k.data(), v.data(), out.data(), lse.data()); else fwd<128>(a, q.data(), k.data(), v.data(), out.data(), lse.data());
  if (D == 64) { dqk<64>(a, q.data(), k.data(), v.data(), dO.data(), lse.data(), delta.data(), dq.data()); dkvk<64>(a, c.splits, q.data(), k.data(), v.data(), dO.data(), lse.data(), delta.data(), dk.data(), dv.data()); }
  else { dqk<128>(a, q.data(), k.data(), v.data(), dO.data(), lse.data(), delta.data(), dq.data()); dkvk<128>(a, c.splits, q.data(), k.data(), v.data(), dO.data(), lse.data(), delta.data(), dk.data(), dv.data()); }
  int bad = 0; double me, mr;
  auto chk = [&](const char* n, const std::vector<float>& g, const std::vector<double>& w, double lim) { double r = l2rel(g, w, &me, &mr); bool ok = r < lim; bad += !ok; printf("  %-4s relL2 %.3g maxErr %.3g maxRef %.3g %s\n", n, r, me, mr, ok ? "ok" : "FAIL"); };
  printf("case b=%d h=%d/%d seq=%d d=%d seg=%d splits=%d\n", B, H, KH, S, D, c.segments, c.splits);
  auto rat = [&](const char* n, const std::vector<float>& g, const std::vector<double>& w, const std::vector<double>& A) { double r = 0; for (size_t i = 0; i < w.size(); ++i) r = std::max(r, std::fabs(g[i] - w[i]) / (A[i] / 64 + std::fabs(w[i]) / 256 + 1e-6)); printf("  %-4s err/bound %.3f\n", n, r); bad += !(r <= 1); };
  { std::vector<float> ob(out); for (auto& x : ob) x = bf(tobf(x)); rat("outb", ob, rO, aO); }
  rat("dq", dq, rdq, adq); rat("dk", dk, rdk, adk); rat("dv", dv, rdv, adv);
  chk("out", out, rO, 1e-2); chk("lse", lse, rL, 1e-5); chk("dq", dq, rdq, 1.5e-2); chk("dk", dk, rdk, 1.5e-2); chk("dv", dv, rdv, 1e-2);
  return bad;
}
int main() {
  int bad = 0;
  for (Case c : {Case{1, 4, 2, 37, 64, false, 1}, Case{1, 4, 2, 37, 64, false, 2}, Case{2, 4, 2, 200, 128, true, 2}, Case{1, 2, 1, 130, 64, true, 1}, Case{1, 2, 2, 129, 128, false, 1}, Case{1, 6, 2, 64, 64, false, 3}})
    bad += run(c);
  printf(bad ? "FAILURES: %d\n" : "ALL PASS\n", bad);
  return bad != 0;
}
