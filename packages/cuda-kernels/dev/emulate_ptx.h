// Host models of the warp-collective PTX instructions the tensor-core kernels use, as the PTX ISA
// defines their fragment layouts: ldmatrix.x4 (and .trans) and mma.m16n8k16 bf16 → f32. Shared by
// dev/emulate_gemm_pipe.cpp and dev/emulate_attention_tc.cpp; a register is modelled per lane
// ([32] arrays), a warp's fragment as [32][4].
#pragma once
#include <cstdint>
#include <cstring>

static float bf(uint16_t h) { uint32_t b = uint32_t(h) << 16; float f; memcpy(&f, &b, 4); return f; }
static uint16_t tobf(float f) { uint32_t b; memcpy(&b, &f, 4); return uint16_t((b + 0x7fffu + ((b >> 16) & 1)) >> 16); }
static float lo(uint32_t r) { return bf(uint16_t(r & 0xffff)); }
static float hi(uint32_t r) { return bf(uint16_t(r >> 16)); }

// ldmatrix.x4 (trans or not): lane l supplies the row address of row (l%8) of matrix l/8.
static void ldsm(const uint16_t* const addr[32], bool trans, uint32_t out[32][4]) {
  for (int q = 0; q < 4; ++q)
    for (int lane = 0; lane < 32; ++lane) {
      uint16_t e0, e1;
      if (!trans) {  // row lane/4, cols 2(lane%4), +1
        const uint16_t* row = addr[q * 8 + lane / 4];
        e0 = row[2 * (lane % 4)]; e1 = row[2 * (lane % 4) + 1];
      } else {  // element [2(lane%4)][lane/4], [2(lane%4)+1][lane/4]
        e0 = addr[q * 8 + 2 * (lane % 4)][lane / 4];
        e1 = addr[q * 8 + 2 * (lane % 4) + 1][lane / 4];
      }
      out[lane][q] = uint32_t(e0) | (uint32_t(e1) << 16);
    }
}

// mma.m16n8k16: A[16][16] from a's four registers, B[16][8] from registers b0, b1; D += A·B (each
// output summed in f64, then added in f32).
static void mma(float acc[32][4], const uint32_t a[32][4], const uint32_t b0[32], const uint32_t b1[32]) {
  float A[16][16], B[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, t = lane & 3;
    A[g][2 * t] = lo(a[lane][0]); A[g][2 * t + 1] = hi(a[lane][0]);
    A[g + 8][2 * t] = lo(a[lane][1]); A[g + 8][2 * t + 1] = hi(a[lane][1]);
    A[g][2 * t + 8] = lo(a[lane][2]); A[g][2 * t + 9] = hi(a[lane][2]);
    A[g + 8][2 * t + 8] = lo(a[lane][3]); A[g + 8][2 * t + 9] = hi(a[lane][3]);
    B[2 * t][g] = lo(b0[lane]); B[2 * t + 1][g] = hi(b0[lane]);
    B[2 * t + 8][g] = lo(b1[lane]); B[2 * t + 9][g] = hi(b1[lane]);
  }
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, t = lane & 3;
    for (int e = 0; e < 4; ++e) {
      const int r = g + 8 * (e >> 1), c = 2 * t + (e & 1);
      double s = 0;
      for (int k = 0; k < 16; ++k) s += double(A[r][k]) * B[k][c];
      acc[lane][e] += float(s);
    }
  }
}
