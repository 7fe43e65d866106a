// Loop nest (per thread region):  jc (NC) -> pc (KC, pack B) -> ic (MC, pack A) -> jr (NR) -> ir (MR).
// The kc x NR B micro-panel stays in L1 while every MR sliver of the A block (L2) streams past it.
// Short k panels swap the two inner loops (kShortPanel).
#include "gemm_driver.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "gemm_kernels.h"
#include "pool.h"

namespace qlora {
namespace {

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};

// Per-thread packing buffers, grown on demand and kept for the life of the thread.
struct PackBuffers {
  std::unique_ptr<float, AlignedFree> a, b;
  std::size_t a_len = 0, b_len = 0;

  static float* ensure(std::unique_ptr<float, AlignedFree>& p, std::size_t& len, std::size_t want) {
    if (want > len) {
      std::size_t bytes = (want * sizeof(float) + 63) / 64 * 64;
      p.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
      len = want;
    }
    return p.get();
  }
};

PackBuffers& buffers() {
  static thread_local PackBuffers b;
  return b;
}

int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

// A k panel this short (LoRA's rank-r products y += s·t·Bᵀ and dx += gt·A, or the tail of a long k) gives each tile
// too little arithmetic to hide the misses on its C rows, and down the A block (ir inner) every tile lands on MR new
// rows: more streams than the hardware prefetcher follows. Such panels walk each A sliver across the whole
// B block instead (jr inner: C rows left to right). The tiles and their sums are the same either way, so results
// are bit-identical. Zen 4, m 1024, n 4096, C += A·Bᵀ, median of 7 interleaved pairs: AVX2 tile 2.3-3.6x faster
// at k 8-24, 1.8x at 48-64, 1.5x at 96, 1.08x at 128, 0.99-1.01x at 192-256; AVX-512 tile 1.1-1.3x at k <= 128.
constexpr int64_t kShortPanel = 128;

// One output tile at (cp, ldc) of which only rows x cols are real: compute into a padded scratch tile.
void edge_tile(const GemmKernel& K, int64_t kc, const float* a, const float* b, float* cp, int64_t ldc, int64_t rows,
               int64_t cols, bool accumulate) {
  alignas(64) float tile[16 * 64];
  K.fn(kc, a, b, tile, K.nr, false);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) cp[i * ldc + j] = accumulate ? cp[i * ldc + j] + tile[i * K.nr + j] : tile[i * K.nr + j];
}

void gemm_region(const GemmKernel& K, int64_t i_begin, int64_t i_end, int64_t j_begin, int64_t j_end, int64_t k,
                 const APacker& A, const BPacker& B, float* c, int64_t ldc, bool accumulate_c) {
  if (i_begin >= i_end || j_begin >= j_end) return;
  if (k == 0) {
    if (accumulate_c) return;  // C += nothing
    for (int64_t i = i_begin; i < i_end; ++i) std::memset(c + i * ldc + j_begin, 0, (j_end - j_begin) * sizeof(float));
    return;
  }
  auto& buf = buffers();
  const int64_t kc_max = packed_k(K, std::min<int64_t>(K.kc, k));
  float* abuf = PackBuffers::ensure(buf.a, buf.a_len, round_up(std::min<int64_t>(K.mc, i_end - i_begin), K.mr) * kc_max);
  float* bbuf = PackBuffers::ensure(buf.b, buf.b_len, round_up(std::min<int64_t>(K.nc, j_end - j_begin), K.nr) * kc_max);
  for (int64_t jc = j_begin; jc < j_end; jc += K.nc) {
    const int64_t nc = std::min(K.nc, j_end - jc);
    for (int64_t pc = 0; pc < k; pc += K.kc) {
      const int64_t kc = std::min(K.kc, k - pc);
      const bool accumulate = pc > 0 || accumulate_c;
      const int64_t kw = packed_k(K, kc);  // packed words per sliver row (kc, or kc/2 for bf16 pairs)
      B.pack(pc, kc, jc, nc, K.nr, bbuf);
      for (int64_t ic = i_begin; ic < i_end; ic += K.mc) {
        const int64_t mc = std::min(K.mc, i_end - ic);
        A.pack(ic, mc, pc, kc, K.mr, abuf);
        const auto tile = [&](int64_t ir, int64_t jr) {
          const int64_t rows = std::min<int64_t>(K.mr, mc - ir), cols = std::min<int64_t>(K.nr, nc - jr);
          float* cp = c + (ic + ir) * ldc + jc + jr;
          if (rows == K.mr && cols == K.nr)
            K.fn(kc, abuf + ir * kw, bbuf + jr * kw, cp, ldc, accumulate);
          else
            edge_tile(K, kc, abuf + ir * kw, bbuf + jr * kw, cp, ldc, rows, cols, accumulate);
        };
        if (kc <= kShortPanel) {
          for (int64_t ir = 0; ir < mc; ir += K.mr)
            for (int64_t jr = 0; jr < nc; jr += K.nr) tile(ir, jr);
        } else {
          for (int64_t jr = 0; jr < nc; jr += K.nr)
            for (int64_t ir = 0; ir < mc; ir += K.mr) tile(ir, jr);
        }
      }
    }
  }
}

}  // namespace

void gemm(int64_t m, int64_t n, int64_t k, const APacker& a, const BPacker& b, float* c, int64_t ldc, bool parallel,
          int b_pack_weight, bool accumulate_c) {
  gemm(gemm_kernel(), m, n, k, a, b, c, ldc, parallel, b_pack_weight, accumulate_c);
}

void gemm(const GemmKernel& K, int64_t m, int64_t n, int64_t k, const APacker& a, const BPacker& b, float* c,
          int64_t ldc, bool parallel, int b_pack_weight, bool accumulate_c) {
  const int threads = parallel ? num_threads() : 1;
  const int64_t flops = m * n * std::max<int64_t>(k, 1);
  // Small products are not worth waking the pool (~10 us per dispatch).
  if (threads <= 1 || flops < (int64_t{1} << 18)) {
    gemm_region(K, 0, m, 0, n, k, a, b, c, ldc, accumulate_c);
    return;
  }
  // Over-decompose (up to 4 tasks per thread, each >= ~2M FMA) and hand tasks out dynamically, so
  // a thread that gets descheduled on a busy machine does not hold the whole product up. Tasks
  // split one dimension only: N tasks each repack all of A, M tasks each repack all of B, so pick
  // the split that duplicates less packing (B weighted by b_pack_weight: dequantizing is dearer).
  const int64_t mt = (m + K.mr - 1) / K.mr, nt = (n + K.nr - 1) / K.nr;
  const int64_t want = std::max<int64_t>(threads, std::min<int64_t>(4 * threads, flops >> 21));
  // Each extra N task repacks all of A (each extra M task all of B): packing moves ~1 element per
  // cycle against 16-32 FMA lanes, so keep tasks >= 512 columns / 384 rows. A dequantizing B packer
  // gets exactly one N task per thread: with 4 per thread, A (x or dy, often larger than L3) was
  // re-read and repacked 4x per thread, and the k/v projections (n = 512) ran 64-column tasks.
  const int64_t tn_only = std::min(nt, b_pack_weight > 1 ? threads : std::max<int64_t>(threads, std::min(want, n / 512)));
  const int64_t tm_only = std::min(mt, std::max<int64_t>(threads, std::min(want, m / 384)));
  const double dup_a = double(m) * k * (tn_only - 1), dup_b = double(k) * n * (tm_only - 1) * b_pack_weight;
  const bool split_n = tn_only >= threads && (tm_only < threads || dup_a <= dup_b);
  // Whole rounds of tasks: with 3 equal tasks on 2 threads one thread idles through the last (2048 x
  // 2048 x 2032 ran 1.45x faster on 2 threads than on 1; 2048^3, 4 tasks, 1.96x).
  const int64_t raw = split_n ? tn_only : tm_only;
  const int64_t tasks = raw >= threads ? raw / threads * threads : raw;
  if (tasks < 2) {
    gemm_region(K, 0, m, 0, n, k, a, b, c, ldc, accumulate_c);
    return;
  }
  std::atomic<int64_t> next{0};
  parallel_for(
      static_cast<std::size_t>(threads),
      [&](std::size_t, std::size_t) {
        for (int64_t t; (t = next.fetch_add(1)) < tasks;) {
          if (split_n)
            gemm_region(K, 0, m, std::min(n, nt * t / tasks * K.nr), std::min(n, nt * (t + 1) / tasks * K.nr), k, a, b, c,
                        ldc, accumulate_c);
          else
            gemm_region(K, std::min(m, mt * t / tasks * K.mr), std::min(m, mt * (t + 1) / tasks * K.mr), 0, n, k, a, b, c,
                        ldc, accumulate_c);
        }
      },
      1);
}

}  // namespace qlora
