// The pool itself is plain C++ (no N-API), so the arm64 kernel check links it as is; getThreads /
// setThreads live in pool_napi.cc.
#include "pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>
#if defined(__x86_64__)
#include <immintrin.h>
#endif


namespace qlora {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__)
  _mm_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

// How long a worker (and a caller waiting for the last parts) polls before sleeping on the condition
// variable. Waking a sleeping thread costs a futex round trip, and on a VM whose vCPU halted when idle,
// hundreds of microseconds: measured on the 2-vCPU EPYC box, a 512^3 GEMM split in two N tasks ran
// entirely on the caller because the worker woke after the caller had claimed both. Back-to-back calls
// (a training step's GEMMs, a decode loop's GEMVs) find the workers still polling. The cost is at most
// this much CPU time per worker after the last call, the trade OpenMP and OpenBLAS make as well.
constexpr auto kSpin = std::chrono::microseconds(200);

template <class Ready>
bool spin_until(Ready ready) {
  const auto deadline = std::chrono::steady_clock::now() + kSpin;
  for (int i = 0;; ++i) {
    if (ready()) return true;
    cpu_relax();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > deadline) return false;
  }
}

// More threads than this only add scheduling overhead (and far more makes the OS refuse them).
constexpr int kMaxThreads = 1024;

class Pool {
 public:
  explicit Pool(int threads) { resize(threads); }
  ~Pool() { stop(); }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void resize(int threads) {
    stop();
    stopping_ = false;
    // A new worker must only react to runs started after it was created: hand it the current
    // generation (a stale one made fresh workers run the previous, already-destroyed task).
    const std::size_t generation = generation_;
    for (int i = 1; i < std::clamp(threads, 1, kMaxThreads); ++i) {
      try {
        workers_.emplace_back([this, i, generation] { loop(i, generation); });
      } catch (const std::system_error&) {
        break;  // the OS refused another thread: run with the ones it gave (size() says how many)
      }
    }
  }

  void run(std::size_t n, const std::function<void(std::size_t, std::size_t)>& fn, std::size_t min_chunk) {
    std::size_t parts = std::min<std::size_t>(size(), (n + min_chunk - 1) / std::max<std::size_t>(min_chunk, 1));
    if (parts <= 1 || in_worker_) {
      if (n) fn(0, n);
      return;
    }
    std::unique_lock<std::mutex> lock(mutex_);
    task_ = &fn;
    n_ = n;
    parts_ = parts;
    next_part_ = 0;
    done_parts_ = 0;
    ++generation_;
    lock.unlock();
    wake_.notify_all();
    // Parts are claimed, not assigned: the caller keeps taking unclaimed parts, so it only ever
    // waits for parts a worker has actually started. (On a loaded machine a worker can take
    // hundreds of microseconds to wake; with fixed assignment every call paid that.)
    lock.lock();
    in_worker_ = true;  // a nested parallel_for inside the caller's parts runs serially, as in workers
    work(lock);
    in_worker_ = false;
    if (done_parts_ != parts_) {
      lock.unlock();
      spin_until([this] { return done_parts_.load(std::memory_order_acquire) == parts_; });
      lock.lock();
      done_.wait(lock, [this] { return done_parts_ == parts_; });
    }
    task_ = nullptr;
  }

 private:
  void chunk(std::size_t part) {
    std::size_t begin = n_ * part / parts_, end = n_ * (part + 1) / parts_;
    if (begin < end) (*task_)(begin, end);
  }

  // Claims and runs parts until none is left; `lock` is held on entry and on return.
  void work(std::unique_lock<std::mutex>& lock) {
    while (task_ != nullptr && next_part_ < parts_) {
      const std::size_t part = next_part_++;
      lock.unlock();
      chunk(part);
      lock.lock();
      if (++done_parts_ == parts_) done_.notify_one();
    }
  }

  void loop(int /*index*/, std::size_t seen) {
    in_worker_ = true;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      lock.unlock();
      spin_until([&] { return stopping_.load(std::memory_order_acquire) || generation_.load(std::memory_order_acquire) != seen; });
      lock.lock();
      wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
      work(lock);
    }
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(std::size_t, std::size_t)>* task_ = nullptr;
  std::size_t n_ = 0, parts_ = 0, next_part_ = 0;
  // Written under mutex_; atomic so that spinning threads may poll them without it.
  std::atomic<std::size_t> done_parts_{0}, generation_{0};
  std::atomic<bool> stopping_{false};
  static thread_local bool in_worker_;
};

thread_local bool Pool::in_worker_ = false;

int default_threads() {
  if (const char* env = std::getenv("QLORA_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

Pool& pool() {
  static Pool instance(default_threads());
  return instance;
}


}  // namespace

void parallel_for(std::size_t n, const std::function<void(std::size_t, std::size_t)>& fn, std::size_t min_chunk) {
  pool().run(n, fn, min_chunk);
}

int num_threads() { return pool().size(); }
void set_num_threads(int n) { pool().resize(n); }

}  // namespace qlora
