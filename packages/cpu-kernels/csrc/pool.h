// A small persistent std::thread pool (no OpenMP: libgomp cannot be linked statically into a .node).
#pragma once
#include <cstddef>
#include <functional>

namespace qlora {

// Runs fn(begin, end) over [0, n) split into contiguous chunks, one per worker, on the pool.
// Blocks until all chunks are done. Calls from inside a worker run serially (no nested parallelism).
void parallel_for(std::size_t n, const std::function<void(std::size_t, std::size_t)>& fn,
                  std::size_t min_chunk = 1);

// Number of threads used by parallel_for (default: all hardware threads, or $QLORA_THREADS).
int num_threads();
void set_num_threads(int n);

}  // namespace qlora
