// Embedding gather and its scatter-add backward. Reference: reference backend embedding(Backward).
// Out-of-range ids produce NaN rows (forward) / are skipped (backward): never an out-of-bounds access.
// Backward uses atomicAdd: for repeated ids the summation order varies between runs (float rounding).
#include "common.cuh"
#include "kernels.h"

namespace qk {
namespace {

__global__ void embeddingKernel(const float* __restrict__ w, const int32_t* __restrict__ ids, int64_t count, int dim,
                                int vocab, float* __restrict__ out) {
  const int64_t total = count * dim;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = t / dim;
    const int id = ids[i];
    out[t] = (id >= 0 && id < vocab) ? w[int64_t(id) * dim + t % dim] : NAN;
  }
}

__global__ void embeddingBackwardKernel(const float* __restrict__ dy, const int32_t* __restrict__ ids, int64_t count,
                                        int dim, int vocab, float* __restrict__ dw) {
  const int64_t total = count * dim;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int id = ids[t / dim];
    if (id >= 0 && id < vocab) atomicAdd(dw + int64_t(id) * dim + t % dim, dy[t]);
  }
}

}  // namespace

void embedding(cudaStream_t s, const float* weight, const int32_t* ids, int64_t count, int dim, int vocab, float* out) {
  require(count >= 0 && dim >= 1 && vocab >= 1, "embedding: bad shape");
  if (count == 0) return;
  embeddingKernel<<<gridFor(count * dim, 256), 256, 0, s>>>(weight, ids, count, dim, vocab, out);
  QK_LAUNCH_CHECK("embeddingKernel");
}

void embeddingBackward(cudaStream_t s, const float* dy, const int32_t* ids, int64_t count, int dim, int vocab, float* dweight) {
  require(count >= 0 && dim >= 1 && vocab >= 1, "embeddingBackward: bad shape");
  QK_CHECK(cudaMemsetAsync(dweight, 0, sizeof(float) * size_t(vocab) * dim, s));
  if (count == 0) return;
  embeddingBackwardKernel<<<gridFor(count * dim, 256), 256, 0, s>>>(dy, ids, count, dim, vocab, dweight);
  QK_LAUNCH_CHECK("embeddingBackwardKernel");
}

}  // namespace qk
