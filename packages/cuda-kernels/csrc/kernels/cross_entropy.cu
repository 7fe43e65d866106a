// Cross-entropy over a large vocabulary without materialising softmax: each thread keeps an online
// (max, sum·exp) pair over its strided slice of the row, the block merges the pairs, so a row is
// read once for the loss and once more for the gradient. Reference: reference backend crossEntropy.
// A label outside [0, vocab) that is not ignoreIndex gives NaN (a visible error, never a wild read).
#include "common.cuh"
#include "kernels.h"

namespace qk {
namespace {

__device__ __forceinline__ void mergeLse(float& m, float& s, float m2, float s2) {
  const float mn = fmaxf(m, m2);
  if (mn == -INFINITY) return;
  s = s * expf(m - mn) + s2 * expf(m2 - mn);
  m = mn;
}

__global__ void crossEntropyKernel(const float* __restrict__ logits, const int32_t* __restrict__ labels, int vocab,
                                   int ignoreIndex, float* __restrict__ loss, float* __restrict__ lse) {
  __shared__ float sm[32], ss[32];
  const int64_t row = blockIdx.x;
  const float* lr = logits + row * vocab;
  float m = -INFINITY, s = 0.f;
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
    const float v = lr[j];
    if (v > m) {
      s = s * expf(m - v) + 1.f;
      m = v;
    } else {
      s += expf(v - m);
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    mergeLse(m, s, m2, s2);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) { sm[warp] = m; ss[warp] = s; }
  __syncthreads();
  if (threadIdx.x == 0) {
    float M = sm[0], S = ss[0];
    for (int w = 1; w < int(blockDim.x >> 5); ++w) mergeLse(M, S, sm[w], ss[w]);
    const float l = M + logf(S);
    lse[row] = l;
    const int label = labels[row];
    if (label == ignoreIndex) loss[row] = 0.f;
    else if (label < 0 || label >= vocab) loss[row] = NAN;
    else loss[row] = l - lr[label];
  }
}

__global__ void crossEntropyBackwardKernel(const float* __restrict__ dloss, const float* __restrict__ logits,
                                           const int32_t* __restrict__ labels, const float* __restrict__ lse, int vocab,
                                           int ignoreIndex, float* __restrict__ d) {
  const int64_t row = blockIdx.y;
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= vocab) return;
  const int label = labels[row];
  const int64_t i = row * vocab + j;
  if (label == ignoreIndex) { d[i] = 0.f; return; }
  const float onehot = j == label ? 1.f : 0.f;
  const float g = dloss[row] * (expf(logits[i] - lse[row]) - onehot);
  d[i] = (label < 0 || label >= vocab) ? NAN : g;
}

}  // namespace

void crossEntropy(cudaStream_t s, const float* logits, const int32_t* labels, int64_t rows, int vocab, int ignoreIndex,
                  float* loss, float* lse) {
  require(rows >= 0 && rows <= INT32_MAX && vocab >= 1, "crossEntropy: rows in [0, 2^31-1], vocab ≥ 1");
  if (rows == 0) return;
  crossEntropyKernel<<<unsigned(rows), 512, 0, s>>>(logits, labels, vocab, ignoreIndex, loss, lse);
  QK_LAUNCH_CHECK("crossEntropyKernel");
}

void crossEntropyBackward(cudaStream_t s, const float* dloss, const float* logits, const int32_t* labels, const float* lse,
                          int64_t rows, int vocab, int ignoreIndex, float* dlogits) {
  require(rows >= 0 && vocab >= 1, "crossEntropyBackward: rows ≥ 0, vocab ≥ 1");
  // gridDim.y ≤ 65535: launch in row chunks.
  for (int64_t r0 = 0; r0 < rows; r0 += 65535) {
    const int64_t chunk = rows - r0 < 65535 ? rows - r0 : 65535;
    dim3 grid((vocab + 255) / 256, unsigned(chunk));
    crossEntropyBackwardKernel<<<grid, 256, 0, s>>>(dloss + r0, logits + r0 * vocab, labels + r0, lse + r0, vocab,
                                                      ignoreIndex, dlogits + r0 * vocab);
    QK_LAUNCH_CHECK("crossEntropyBackwardKernel");
  }
}

}  // namespace qk
