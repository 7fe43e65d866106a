// The blocked GEMM driver (Goto/BLIS loop nest) over abstract panel packers, so the same driver
// serves dense f32/bf16 matmul and the fused 4-bit GEMMs (whose B packer dequantizes each tile
// while packing it: the full dequantized weight never exists).
#pragma once
#include <cstdint>

namespace qlora {

// Packs the block op(A)[i0 : i0+mc, p0 : p0+kc] as ceil(mc/mr) slivers of [kc][mr] floats,
// rows past mc zero-filled. (bf16 k-pair packers write [ceil(kc/2)][mr] 32-bit words instead.)
struct APacker {
  virtual ~APacker() = default;
  virtual void pack(int64_t i0, int64_t mc, int64_t p0, int64_t kc, int mr, float* dst) const = 0;
};

// Packs the block op(B)[p0 : p0+kc, j0 : j0+nc] as ceil(nc/nr) panels of [kc][nr] floats,
// columns past nc zero-filled.
struct BPacker {
  virtual ~BPacker() = default;
  virtual void pack(int64_t p0, int64_t kc, int64_t j0, int64_t nc, int nr, float* dst) const = 0;
};

// C[m x n] (row stride ldc) = op(A)[m x k] * op(B)[k x n]. Splits the output into N or M tasks
// handed out dynamically over the thread pool unless `parallel` is false (required when called
// from inside a pool task). b_pack_weight: relative cost of packing a B element vs an A element
// (a dequantizing B packer passes > 1 so the weight is decoded once, i.e. the split is over N).
// accumulate_c: C += op(A)·op(B) (C read, not overwritten: the micro-kernels' accumulate mode from the first k panel).
void gemm(int64_t m, int64_t n, int64_t k, const APacker& a, const BPacker& b, float* c, int64_t ldc,
          bool parallel = true, int b_pack_weight = 1, bool accumulate_c = false);

struct GemmKernel;
// The same with an explicit micro-kernel (the packers must produce its layout: K.kpair).
void gemm(const GemmKernel& K, int64_t m, int64_t n, int64_t k, const APacker& a, const BPacker& b, float* c,
          int64_t ldc, bool parallel = true, int b_pack_weight = 1, bool accumulate_c = false);

}  // namespace qlora
