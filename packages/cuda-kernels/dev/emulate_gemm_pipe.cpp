// Host emulation of the index math of csrc/kernels/gemm_pipe.cuh and gemm_nf4.cu's Nf4Op: cp.async tile
// loads (zero-fill), NF4 prepare, ldmatrix(.trans) addresses, mma.m16n8k16 fragments (as the PTX ISA defines
// them), grouped rasterisation and the epilogue, for the dense GEMM in all four transpose layouts and the
// fused NF4 forward / input grad — against an f64 GEMM. It models the stage rotation and cp.async landing (eager/lazy, see cp) but not
// the hardware itself (no races between threads inside a barrier interval beyond the prepare/MMA order).
// Written because no GPU was available: the formulas are hand-copied from the kernels (keep them in sync).
// Run: g++ -O2 -std=c++17 dev/emulate_gemm_pipe.cpp -o /tmp/emu && /tmp/emu   (prints ALL PASS; also clean
// under -fsanitize=address,undefined, which catches global reads outside the operands)
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "emulate_ptx.h"

constexpr int BM = 128, BN = 128, BK = 32, THREADS = 256;
constexpr int LDK = BK + 8, LDMN = BM + 8;


// Shared memory starts as 0xFF bytes: bf16 0xFFFF and f32 0xFFFFFFFF are NaN, so a read of a byte no
// load wrote (padding, a stage not yet landed) poisons the result instead of adding a tiny value.
struct Smem { std::vector<uint8_t> b; Smem(size_t n) : b(n, 0xFF) {} };

// cp.async emulation with a pipeline model. Eager mode: a copy lands when issued (the earliest the
// hardware may write it — exposes a stage overwritten while still being read). Lazy mode: a copy
// lands only at the cp.async.wait_group that guarantees it (the latest — exposes a read before the
// wait). Commit groups are uniform across threads in the kernels, so one queue models all threads.
struct Copy { uint8_t* dst; std::vector<uint8_t> data; };
static bool gLazy = false;
static std::vector<Copy> gOpen;
static std::vector<std::vector<Copy>> gGroups;
static void cp(uint8_t* dst, const uint8_t* src, int bytes, bool valid) {
  Copy c{dst, std::vector<uint8_t>(bytes, 0)};
  if (valid) memcpy(c.data.data(), src, bytes);
  if (!gLazy) memcpy(dst, c.data.data(), bytes);
  else gOpen.push_back(std::move(c));
}
static void commitGroup() { gGroups.push_back(std::move(gOpen)); gOpen.clear(); }
static void waitGroup(int n) {  // all but the newest n groups have landed
  while (int(gGroups.size()) > n) {
    for (const Copy& c : gGroups.front()) memcpy(c.dst, c.data.data(), c.data.size());
    gGroups.erase(gGroups.begin());
  }
}

struct Dense {
  const uint16_t* p; int rows, K; int64_t ld, batchStride; bool kMajor;
  void load(uint8_t* stage, int batch, int r0, int k0, int tid) const {
    const uint16_t* base = p + batch * batchStride;
    uint16_t* tile = reinterpret_cast<uint16_t*>(stage);
    for (int i = 0; i < 2; ++i) {
      const int c = tid + i * THREADS;
      if (kMajor) {
        const int row = c >> 2, col = (c & 3) * 8;
        const int gr = r0 + row, gk = k0 + col;
        const bool ok = gr < rows && gk < K;
        cp((uint8_t*)(tile + row * LDK + col), (const uint8_t*)(ok ? base + gr * ld + gk : base), 16, ok);
      } else {
        const int row = c >> 4, col = (c & 15) * 8;
        const int gk = k0 + row, gr = r0 + col;
        const bool ok = gk < K && gr < rows;
        cp((uint8_t*)(tile + row * LDMN + col), (const uint8_t*)(ok ? base + gk * ld + gr : base), 16, ok);
      }
    }
  }
};

static const uint32_t kNf4[16] = {0xbf800000u, 0xbf3239b1u, 0xbf066b30u, 0xbeca32a0u, 0xbe91a24du, 0xbe3d353fu,
                                  0xbdba7871u, 0x00000000u, 0x3da2faffu, 0x3e24cae3u, 0x3e7c04ddu, 0x3ead033au,
                                  0x3ee1a4b8u, 0x3f1007abu, 0x3f3913b3u, 0x3f800000u};
static float lutv(int c) { float f; memcpy(&f, &kNf4[c], 4); return f; }

struct Nf4 {
  const uint8_t* codes; const float* scales; int N, K, log2Bs; bool trans;
  static constexpr int kCodeBytes = 2048;
  void load(uint8_t* stage, int r0, int k0, int t) const {
    uint8_t* sc = stage;
    float* ss = reinterpret_cast<float*>(stage + kCodeBytes);
    if (!trans) {
      if (t < 128) {
        const int n = r0 + t;
        const bool ok = n < N;
        cp(sc + t * 16, ok ? codes + (int64_t(n) * K + k0) / 2 : codes, 16, ok);
      }
      const int n = r0 + (t >> 1);
      const bool ok = n < N;
      cp((uint8_t*)(ss + t), (const uint8_t*)(ok ? scales + ((int64_t(n) * K + k0 + 16 * (t & 1)) >> log2Bs) : scales), 4, ok);
    } else {
      if (t < 128) {
        const int wr = k0 + (t >> 2), wc = r0 + 32 * (t & 3);
        const bool ok = wr < N && wc < K;
        cp(sc + t * 16, ok ? codes + (int64_t(wr) * K + wc) / 2 : codes, 16, ok);
      }
      const int wr = k0 + (t >> 3), wc = r0 + 16 * (t & 7);
      const bool ok = wr < N && wc < K;
      cp((uint8_t*)(ss + t), (const uint8_t*)(ok ? scales + ((int64_t(wr) * K + wc) >> log2Bs) : scales), 4, ok);
    }
  }
  void prepare(const uint8_t* stage, uint16_t* deq, int t) const {
    uint32_t px, py;
    memcpy(&px, stage + t * 8, 4);
    memcpy(&py, stage + t * 8 + 4, 4);
    float scale;
    memcpy(&scale, stage + kCodeBytes + 4 * t, 4);
    uint16_t* dst = trans ? deq + (t >> 3) * LDMN + (t & 7) * 16 : deq + (t >> 1) * LDK + (t & 1) * 16;
    uint32_t words[8];
    for (int b = 0; b < 8; ++b) {
      const uint32_t byte = ((b < 4 ? px : py) >> (8 * (b & 3))) & 0xffu;
      const uint32_t lo = tobf(lutv(byte >> 4) * scale);
      const uint32_t hi = tobf(lutv(byte & 15) * scale);
      words[b] = lo | (hi << 16);
    }
    memcpy(dst, words, 32);
  }
};

static void rasterize(int pid, int tilesM, int tilesN, int& mt, int& nt) {
  constexpr int G = 8;
  const int perGroup = G * tilesN;
  const int group = pid / perGroup;
  const int first = group * G;
  const int size = std::min(tilesM - first, G);
  const int local = pid - group * perGroup;
  mt = first + local % size;
  nt = local / size;
}

// mmaTile of gemm_pipe.cuh for all 8 warps of a block.
static void mmaTile(const uint16_t* tA, const uint16_t* tB, bool aK, bool bK, float (*acc)[4][4][32][4]) {
  for (int warp = 0; warp < 8; ++warp) {
    const int wm = warp >> 2, wn = warp & 3;
    for (int kk = 0; kk < BK; kk += 16) {
      uint32_t fa[4][32][4], fb[4][2][32];  // fb[n-tile][register][lane]
      for (int i = 0; i < 4; ++i) {
        const int mb = wm * 64 + i * 16;
        const uint16_t* addr[32];
        for (int lane = 0; lane < 32; ++lane)
          addr[lane] = aK ? tA + (mb + (lane & 15)) * LDK + kk + (lane >> 4) * 8
                          : tA + (kk + (lane >> 4) * 8 + (lane & 7)) * LDMN + mb + ((lane >> 3) & 1) * 8;
        ldsm(addr, !aK, fa[i]);
      }
      for (int jj = 0; jj < 2; ++jj) {
        const int nb = wn * 32 + jj * 16;
        const uint16_t* addr[32];
        for (int lane = 0; lane < 32; ++lane)
          addr[lane] = bK ? tB + (nb + (lane >> 4) * 8 + (lane & 7)) * LDK + kk + ((lane >> 3) & 1) * 8
                          : tB + (kk + ((lane >> 3) & 1) * 8 + (lane & 7)) * LDMN + nb + (lane >> 4) * 8;
        uint32_t r[32][4];
        ldsm(addr, !bK, r);
        for (int lane = 0; lane < 32; ++lane) {
          fb[2 * jj][0][lane] = r[lane][0]; fb[2 * jj][1][lane] = r[lane][1];
          fb[2 * jj + 1][0][lane] = r[lane][2]; fb[2 * jj + 1][1][lane] = r[lane][3];
        }
      }
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) mma(acc[warp][i][j], fa[i], fb[j][0], fb[j][1]);
    }
  }
}

// One GEMM: A dense (kMajor aK), B dense (kMajor bK) or NF4 (nf4 != null). C f32 [batch][M][N].
// The k loop is pipeKernel's: STAGES stage buffers, prologue of STAGES-1 commit groups, per k-tile one
// wait + barrier, the load of tile kt+STAGES-1 into stage (kt-1)%STAGES, and for NF4 the prepare of
// tile kt+1 into deq((kt+1)&1) while tile kt is read from deq(kt&1). Between two barriers the warps
// run in any order: prepFirst runs the prepare before the MMAs of the same interval.
constexpr int STAGES = 4;
static void run(const Dense& a, const Dense* bd, const Nf4* bn, int M, int N, int K, int batch, std::vector<float>& C,
                bool prepFirst = false) {
  const bool aK = a.kMajor, bK = bd ? bd->kMajor : !bn->trans;
  const bool kPrepare = bn != nullptr;
  const int tilesM = (M + BM - 1) / BM, tilesN = (N + BN - 1) / BN;
  const int kTiles = (K + BK - 1) / BK;
  std::vector<int> seen(tilesM * tilesN, 0);
  for (int bz = 0; bz < batch; ++bz)
    for (int pid = 0; pid < tilesM * tilesN; ++pid) {
      int mt, nt;
      rasterize(pid, tilesM, tilesN, mt, nt);
      if (bz == 0) seen[mt * tilesN + nt]++;
      const int m0 = mt * BM, n0 = nt * BN;
      static float acc[8][4][4][32][4];
      memset(acc, 0, sizeof acc);
      std::vector<Smem> sa(STAGES, Smem(20480)), sb(STAGES, Smem(20480)), deq(2, Smem(20480));
      gOpen.clear();
      gGroups.clear();
      auto load = [&](int tile) {
        for (int t = 0; t < THREADS; ++t) {
          a.load(sa[tile % STAGES].b.data(), bz, m0, tile * BK, t);
          if (bd) bd->load(sb[tile % STAGES].b.data(), bz, n0, tile * BK, t);
          else bn->load(sb[tile % STAGES].b.data(), n0, tile * BK, t);
        }
      };
      auto prepare = [&](int tile) {
        for (int t = 0; t < THREADS; ++t) bn->prepare(sb[tile % STAGES].b.data(), reinterpret_cast<uint16_t*>(deq[tile & 1].b.data()), t);
      };
      for (int s = 0; s < STAGES - 1; ++s) {
        if (s < kTiles) load(s);
        commitGroup();
      }
      if (kPrepare) {
        waitGroup(STAGES - 2);
        prepare(0);
      }
      for (int kt = 0; kt < kTiles; ++kt) {
        waitGroup(kPrepare ? STAGES - 3 : STAGES - 2);
        const int next = kt + STAGES - 1;
        if (next < kTiles) load(next);
        commitGroup();
        const uint16_t* tA = reinterpret_cast<const uint16_t*>(sa[kt % STAGES].b.data());
        const uint16_t* tB = kPrepare ? reinterpret_cast<const uint16_t*>(deq[kt & 1].b.data())
                                      : reinterpret_cast<const uint16_t*>(sb[kt % STAGES].b.data());
        if (kPrepare && prepFirst && kt + 1 < kTiles) prepare(kt + 1);
        mmaTile(tA, tB, aK, bK, acc);
        if (kPrepare && !prepFirst && kt + 1 < kTiles) prepare(kt + 1);
      }
      waitGroup(0);
      for (int warp = 0; warp < 8; ++warp) {
        const int wm = warp >> 2, wn = warp & 3;
        for (int lane = 0; lane < 32; ++lane) {
          const int g = lane >> 2, t = lane & 3;
          for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j) {
              const int col = n0 + wn * 32 + j * 8 + 2 * t;
              for (int h = 0; h < 2; ++h) {
                const int row = m0 + wm * 64 + i * 16 + g + 8 * h;
                if (row >= M || col >= N) continue;
                const int64_t idx = int64_t(bz) * M * N + int64_t(row) * N + col;
                C[idx] = acc[warp][i][j][lane][2 * h];
                if (col + 1 < N) C[idx + 1] = acc[warp][i][j][lane][2 * h + 1];
              }
            }
        }
      }
    }
  for (int v : seen) if (v != 1) { printf("raster: tile visited %d times\n", v); exit(1); }
}

static std::mt19937 rng(7);
static std::vector<uint16_t> rb(size_t n) {
  std::normal_distribution<float> d;
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = tobf(d(rng));
  return v;
}

static bool cmp(const char* name, const std::vector<float>& got, const std::vector<double>& want) {
  double maxErr = 0; size_t bad = SIZE_MAX;
  for (size_t i = 0; i < want.size(); ++i) {
    const double e = std::fabs(got[i] - want[i]);
    maxErr = std::max(maxErr, e);
    if (!(e <= 1e-3 + 1e-4 * std::fabs(want[i])) && bad == SIZE_MAX) bad = i;
  }
  printf("%s %s maxErr %.3g%s\n", bad == SIZE_MAX ? "PASS" : "FAIL", name, maxErr, bad == SIZE_MAX ? "" : (" at " + std::to_string(bad)).c_str());
  return bad == SIZE_MAX;
}

int main() {
  bool ok = true;
  for (bool lazy : {false, true}) {
  gLazy = lazy;
  printf("-- cp.async copies land %s\n", lazy ? "lazily (at the wait that guarantees them)" : "eagerly (when issued)");
  struct S { int batch, m, n, k; int64_t bsB; };  // bsB: B batch stride (-1: k·n, 0: broadcast)
  for (S s : {S{1, 136, 72, 200, -1}, S{2, 130, 264, 72, -1}, S{1, 8, 8, 8, -1}, S{1, 256, 136, 64, -1},
              S{2, 64, 256, 96, 0}, S{1, 1096, 136, 520, -1}}) {
    for (int combo = 0; combo < 4; ++combo) {
      const bool ta = combo & 1, tb = combo & 2;
      const int64_t as = int64_t(s.m) * s.k, bs = s.bsB < 0 ? int64_t(s.k) * s.n : s.bsB;
      // gemm.cu pipelineFits (allocations are 16-byte aligned): other shapes take the legacy kernel.
      if (!(as % 8 == 0 && bs % 8 == 0 && (ta ? s.m : s.k) % 8 == 0 && (tb ? s.k : s.n) % 8 == 0)) continue;
      auto A = rb(as * s.batch), B = rb(bs * (s.batch - 1) + int64_t(s.k) * s.n);
      Dense a{A.data(), s.m, s.k, ta ? s.m : s.k, as, !ta};
      Dense b{B.data(), s.n, s.k, tb ? s.k : s.n, bs, tb};
      std::vector<float> C(int64_t(s.batch) * s.m * s.n, NAN);
      run(a, &b, nullptr, s.m, s.n, s.k, s.batch, C);
      std::vector<double> want(C.size());
      for (int z = 0; z < s.batch; ++z)
        for (int i = 0; i < s.m; ++i)
          for (int j = 0; j < s.n; ++j) {
            double acc = 0;
            for (int p = 0; p < s.k; ++p) {
              const float av = bf(ta ? A[z * as + int64_t(p) * s.m + i] : A[z * as + int64_t(i) * s.k + p]);
              const float bv = bf(tb ? B[z * bs + int64_t(j) * s.k + p] : B[z * bs + int64_t(p) * s.n + j]);
              acc += double(av) * bv;
            }
            want[(int64_t(z) * s.m + i) * s.n + j] = acc;
          }
      char name[100];
      snprintf(name, sizeof name, "dense b=%d m=%d n=%d k=%d tA=%d tB=%d%s", s.batch, s.m, s.n, s.k, ta, tb, s.bsB == 0 ? " B broadcast" : "");
      ok &= cmp(name, C, want);
    }
  }
  // NF4: W [n, k], bs 64 and 16 (gemm_nf4.cu fusedFits: k % 32 == 0; input grad also n % 8 == 0).
  struct W { int m, n, k, bs; };
  for (W w : {W{17, 200, 320, 64}, W{130, 136, 256, 16}, W{5, 264, 96, 32}, W{3, 72, 640, 64}}) {
    std::vector<uint8_t> codes(int64_t(w.n) * w.k / 2);
    for (auto& c : codes) c = uint8_t(rng());
    const int64_t nb = (int64_t(w.n) * w.k + w.bs - 1) / w.bs;
    std::vector<float> sc(nb);
    for (auto& v : sc) v = 0.01f + 0.1f * float(rng() % 1000) / 1000.f;
    int lg = 0; while ((1 << lg) < w.bs) ++lg;
    std::vector<float> deqw(int64_t(w.n) * w.k);
    for (int64_t i = 0; i < int64_t(deqw.size()); ++i) {
      const uint8_t byte = codes[i / 2];
      deqw[i] = bf(tobf(lutv((i & 1) ? (byte & 15) : (byte >> 4)) * sc[i / w.bs]));
    }
    for (bool trans : {false, true})
      for (bool prepFirst : {false, true}) {
        const int Nout = trans ? w.k : w.n, Kred = trans ? w.n : w.k;
        auto X = rb(int64_t(w.m) * Kred);
        Dense a{X.data(), w.m, Kred, Kred, 0, true};
        Nf4 b{codes.data(), sc.data(), w.n, w.k, lg, trans};
        std::vector<float> C(int64_t(w.m) * Nout, NAN);
        run(a, nullptr, &b, w.m, Nout, Kred, 1, C, prepFirst);
        std::vector<double> want(C.size());
        for (int i = 0; i < w.m; ++i)
          for (int j = 0; j < Nout; ++j) {
            double acc = 0;
            for (int p = 0; p < Kred; ++p)
              acc += double(bf(X[int64_t(i) * Kred + p])) * (trans ? deqw[int64_t(p) * w.k + j] : deqw[int64_t(j) * w.k + p]);
            want[int64_t(i) * Nout + j] = acc;
          }
        char name[120];
        snprintf(name, sizeof name, "nf4 %s m=%d n=%d k=%d bs=%d%s", trans ? "input-grad" : "forward", w.m, w.n, w.k, w.bs,
                 prepFirst ? " (prepare before MMAs)" : "");
        ok &= cmp(name, C, want);
      }
  }
  }
  printf(ok ? "ALL PASS\n" : "SOME FAILED\n");
  return ok ? 0 : 1;
}
