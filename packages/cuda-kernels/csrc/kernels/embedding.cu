// Embedding gather and its scatter-add backward. Reference: reference backend embedding(Backward).
// Out-of-range ids produce NaN rows (forward) / are skipped (backward): never an out-of-bounds access.
//
// Backward, default (SORTED, deterministic): a stable CUB radix sort of (id, position) pairs groups the
// positions of each id in ascending order; one block column per run of equal ids then sums that run's dy
// rows in position order, accumulating in f64 and rounding once, exactly as the reference backend does
// (Float64Array accumulator, positions in order). So the result is bit-identical run to run and to the
// reference. No float atomics anywhere. Compiled, unverified on a GPU (dev/check_embedding.cu checks it).
// Backward, legacy (ATOMIC, QLORA_CUDA_EMBEDDING_BWD=legacy): float atomicAdd, order varies between runs.
#include <cub/device/device_radix_sort.cuh>

#include <climits>
#include <cstdlib>
#include <cstring>

#include "../runtime/device.h"
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

__global__ void embeddingBackwardAtomicKernel(const float* __restrict__ dy, const int32_t* __restrict__ ids,
                                              int64_t count, int dim, int vocab, float* __restrict__ dw) {
  const int64_t total = count * dim;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int id = ids[t / dim];
    if (id >= 0 && id < vocab) atomicAdd(dw + int64_t(id) * dim + t % dim, dy[t]);
  }
}

// Sort input: key = id, or vocab for an out-of-range id (sorts last, then skipped); value = position.
__global__ void sortInputsKernel(const int32_t* __restrict__ ids, int64_t count, int vocab, uint32_t* __restrict__ keys,
                                 int32_t* __restrict__ pos) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    const int id = ids[i];
    keys[i] = (id >= 0 && id < vocab) ? uint32_t(id) : uint32_t(vocab);
    pos[i] = int32_t(i);
  }
}

/** First index after k whose key differs from `key` (or count). Block-wide: every thread must call it. */
__device__ int64_t runEnd(const uint32_t* __restrict__ keys, int64_t k, int64_t count, uint32_t key) {
  __shared__ unsigned long long first;
  for (int64_t base = k + 1;; base += blockDim.x) {
    if (threadIdx.x == 0) first = ULLONG_MAX;
    __syncthreads();
    const int64_t j = base + threadIdx.x;
    if (j >= count || keys[j] != key) atomicMin(&first, static_cast<unsigned long long>(j));
    __syncthreads();
    const unsigned long long f = first;
    __syncthreads();  // everyone has read `first` before the next round resets it
    if (f != ULLONG_MAX) return static_cast<int64_t>(f);
  }
}

// grid (count, ceil(dim / blockDim)). Block (k, y) works only if sorted index k starts a run of equal ids;
// each thread owns one column of the run's dweight row and sums the run's dy rows in position order
// (stable sort ⇒ ascending positions). Threads own consecutive columns, so the row reads coalesce.
__global__ void runSumKernel(const float* __restrict__ dy, const uint32_t* __restrict__ keys,
                             const int32_t* __restrict__ pos, int64_t count, int dim, uint32_t vocab,
                             float* __restrict__ dw) {
  const int64_t k = blockIdx.x;
  const uint32_t key = keys[k];
  if (key >= vocab || (k > 0 && keys[k - 1] == key)) return;  // uniform per block: skipped id or not a run start
  const int64_t end = runEnd(keys, k, count, key);
  const int d = blockIdx.y * blockDim.x + threadIdx.x;
  if (d >= dim) return;
  double acc = 0.0;  // f64 like the reference's accumulator: same order, same rounding
#pragma unroll 4
  for (int64_t j = k; j < end; ++j) acc += double(dy[int64_t(pos[j]) * dim + d]);
  dw[int64_t(key) * dim + d] = float(acc);
}

size_t align256(size_t b) { return (b + 255) / 256 * 256; }

void embeddingBackwardSorted(cudaStream_t s, const float* dy, const int32_t* ids, int64_t count, int dim, int vocab,
                             float* dweight) {
  require(count <= INT32_MAX, "embeddingBackward: count must be < 2^31 (sorted path)");
  const unsigned threads = dim >= 256 ? 256u : unsigned((dim + 31) / 32 * 32);
  const int64_t colBlocks = (int64_t(dim) + threads - 1) / threads;
  require(colBlocks <= 65535, "embeddingBackward: dim too large for the sorted path's grid");
  const int n = int(count);
  const int endBit = 32 - __builtin_clz(uint32_t(vocab));  // keys are ≤ vocab (the out-of-range sentinel)
  size_t tempBytes = 0;
  QK_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, tempBytes, static_cast<const uint32_t*>(nullptr),
                                           static_cast<uint32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
                                           static_cast<int32_t*>(nullptr), n, 0, endBit, s));
  const size_t vec = align256(sizeof(uint32_t) * size_t(n));
  Runtime& rt = Runtime::get();
  char* scratch = static_cast<char*>(rt.allocate(4 * vec + align256(tempBytes)));
  uint32_t* keysIn = reinterpret_cast<uint32_t*>(scratch);
  uint32_t* keysOut = reinterpret_cast<uint32_t*>(scratch + vec);
  int32_t* posIn = reinterpret_cast<int32_t*>(scratch + 2 * vec);
  int32_t* posOut = reinterpret_cast<int32_t*>(scratch + 3 * vec);
  void* temp = scratch + 4 * vec;
  sortInputsKernel<<<gridFor(size_t(n), 256), 256, 0, s>>>(ids, count, vocab, keysIn, posIn);
  QK_LAUNCH_CHECK("sortInputsKernel");
  QK_CHECK(cub::DeviceRadixSort::SortPairs(temp, tempBytes, keysIn, keysOut, posIn, posOut, n, 0, endBit, s));
  runSumKernel<<<dim3(unsigned(n), unsigned(colBlocks)), threads, 0, s>>>(dy, keysOut, posOut, count, dim,
                                                                         uint32_t(vocab), dweight);
  QK_LAUNCH_CHECK("runSumKernel");
  // The allocator reuses released blocks in compute-stream order; on any other stream wait first.
  if (s != rt.compute()) QK_CHECK(cudaStreamSynchronize(s));
  rt.release(scratch);
}

bool legacyFromEnv() {
  const char* e = std::getenv("QLORA_CUDA_EMBEDDING_BWD");
  return e != nullptr && (std::strcmp(e, "legacy") == 0 || std::strcmp(e, "atomic") == 0);
}

}  // namespace

void embedding(cudaStream_t s, const float* weight, const int32_t* ids, int64_t count, int dim, int vocab, float* out) {
  require(count >= 0 && dim >= 1 && vocab >= 1, "embedding: bad shape");
  if (count == 0) return;
  embeddingKernel<<<gridFor(count * dim, 256), 256, 0, s>>>(weight, ids, count, dim, vocab, out);
  QK_LAUNCH_CHECK("embeddingKernel");
}

void embeddingBackward(cudaStream_t s, const float* dy, const int32_t* ids, int64_t count, int dim, int vocab,
                       float* dweight, int path) {
  require(count >= 0 && dim >= 1 && vocab >= 1, "embeddingBackward: bad shape");
  require(path == EMB_BWD_AUTO || path == EMB_BWD_SORTED || path == EMB_BWD_ATOMIC, "embeddingBackward: bad path");
  // Rows of ids that never occur stay zero; the sorted path writes every other row exactly once.
  QK_CHECK(cudaMemsetAsync(dweight, 0, sizeof(float) * size_t(vocab) * dim, s));
  if (count == 0) return;
  static const bool legacy = legacyFromEnv();
  if (path == EMB_BWD_ATOMIC || (path == EMB_BWD_AUTO && legacy)) {
    embeddingBackwardAtomicKernel<<<gridFor(count * dim, 256), 256, 0, s>>>(dy, ids, count, dim, vocab, dweight);
    QK_LAUNCH_CHECK("embeddingBackwardAtomicKernel");
    return;
  }
  embeddingBackwardSorted(s, dy, ids, count, dim, vocab, dweight);
}

}  // namespace qk
