// Fused LoRA rank-r accumulate: y[m, n] += scale · t[m, r] · op(B), r ≤ 64.
//   forward  (up-projection):   y  += s · (x·Aᵀ) · Bᵀ    B stored [n, r]  (bTransposed = true)
//   backward (input gradient):  dx += s · (dy·B) · A     A stored [r, n]  (bTransposed = false)
// The product has K = r, so it is memory-bound: the unfused form writes t·op(B) to a temporary and
// adds it (write u, read y, read u, write y: four y-sized passes); this kernel reads and writes y
// once. That halves the traffic of the step, which is the whole cost of it — where LoRA fusion pays.
// Reference: dev/check_lora.cu (f64 host product, then the same f32 accumulate).
#include "common.cuh"
#include "kernels.h"

namespace qk {
namespace {

constexpr int kRows = 32;      // rows of y per block
constexpr int kCols = 128;     // columns of y per block
constexpr int kThreads = 256;  // 8 warps: warp w owns rows 4w..4w+3, lane owns columns lane + 32j
constexpr int kMaxLoraRank = 64;

template <class T>
__device__ __forceinline__ float toFloat(T v);
template <>
__device__ __forceinline__ float toFloat<float>(float v) { return v; }
template <>
__device__ __forceinline__ float toFloat<uint16_t>(uint16_t v) { return bf16ToFloat(v); }

// Shared tiles in f32 with an odd row stride (r | 1): lanes read B rows of consecutive columns, and the odd
// stride puts them in distinct banks; t rows are read by a whole warp at once (broadcast).
template <class T>
__global__ void __launch_bounds__(kThreads) loraAccumulateKernel(const T* __restrict__ t, const T* __restrict__ b,
                                                                 bool bTransposed, int m, int n, int r, float scale,
                                                                 float* __restrict__ y) {
  __shared__ float tS[kRows * (kMaxLoraRank + 1)];
  __shared__ float bS[kCols * (kMaxLoraRank + 1)];
  const int m0 = blockIdx.y * kRows, n0 = blockIdx.x * kCols, ld = r | 1;  // odd stride: no bank conflicts
  for (int i = threadIdx.x; i < kRows * r; i += kThreads) {
    const int row = i / r, k = i % r;
    tS[row * ld + k] = m0 + row < m ? toFloat(t[int64_t(m0 + row) * r + k]) : 0.f;
  }
  for (int i = threadIdx.x; i < kCols * r; i += kThreads) {
    // [n, r]: consecutive threads walk k (contiguous); [r, n]: consecutive threads walk columns
    const int col = bTransposed ? i / r : i % kCols, k = bTransposed ? i % r : i / kCols;
    float v = 0.f;
    if (n0 + col < n) v = toFloat(bTransposed ? b[int64_t(n0 + col) * r + k] : b[int64_t(k) * n + n0 + col]);
    bS[col * ld + k] = v;
  }
  __syncthreads();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float acc[4][4] = {};
  for (int k = 0; k < r; ++k) {
    float tv[4], bv[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) tv[i] = tS[(warp * 4 + i) * ld + k];
#pragma unroll
    for (int j = 0; j < 4; ++j) bv[j] = bS[(lane + 32 * j) * ld + k];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(tv[i], bv[j], acc[i][j]);
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int row = m0 + warp * 4 + i;
    if (row >= m) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int col = n0 + lane + 32 * j;
      if (col < n) y[int64_t(row) * n + col] += scale * acc[i][j];
    }
  }
}

}  // namespace

void loraAccumulate(cudaStream_t s, const void* t, const void* b, int dtype, bool bTransposed, int m, int n, int r,
                    float scale, float* y) {
  require(m >= 0 && n >= 0, "loraAccumulate: m and n must be >= 0");
  require(r >= 1 && r <= kMaxLoraRank, "loraAccumulate: rank r must be in [1, 64], got " + std::to_string(r));
  require(dtype == F32 || dtype == BF16, "loraAccumulate: t and B must both be f32 or both bf16");
  if (m == 0 || n == 0) return;
  const dim3 grid((n + kCols - 1) / kCols, (m + kRows - 1) / kRows);
  require(grid.y <= 65535u, "loraAccumulate: m too large for one launch (> 65535·32 rows)");
  if (dtype == F32)
    loraAccumulateKernel<float><<<grid, kThreads, 0, s>>>(static_cast<const float*>(t), static_cast<const float*>(b),
                                                          bTransposed, m, n, r, scale, y);
  else
    loraAccumulateKernel<uint16_t><<<grid, kThreads, 0, s>>>(static_cast<const uint16_t*>(t),
                                                             static_cast<const uint16_t*>(b), bTransposed, m, n, r,
                                                             scale, y);
  QK_LAUNCH_CHECK("loraAccumulateKernel");
}

}  // namespace qk
