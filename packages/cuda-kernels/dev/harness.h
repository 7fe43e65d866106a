// Shared plumbing of the standalone GPU check (dev/gpu_check.cu and dev/check_*.cu): device buffers,
// reporting, comparisons, timing and the results table. Extra check files register themselves with
// `static qk::harness::Register reg("name", checkFn, benchFn);` and gpu_check.cu's main runs them after its own.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "../csrc/kernels/kernels.h"
#include "../csrc/runtime/check.h"
#include "../csrc/runtime/cublas_dyn.h"
#include "../csrc/runtime/device.h"
#include "../csrc/runtime/dtype.h"
#include "dynamic_maps.h"

using namespace qk;

// ------------------------------------------------------------------ plumbing
inline int gPass = 0, gFail = 0;
inline std::vector<std::string> gFailures;
inline void report(const std::string& name, bool ok, const std::string& detail = "") {
  (ok ? gPass : gFail)++;
  if (!ok) gFailures.push_back(name);
  std::printf("  [%s] %s%s%s\n", ok ? "PASS" : "FAIL", name.c_str(), detail.empty() ? "" : "  ", detail.c_str());
  std::fflush(stdout);
}
// Runs one check; a thrown CudaError/ArgError is a failure of that check, not of the harness.
inline void guarded(const std::string& name, const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    report(name, false, std::string("threw: ") + e.what());
    cudaGetLastError();
  }
}

inline Runtime& rt() { return Runtime::get(); }
inline cudaStream_t S() { return rt().compute(); }
template <class T>
inline T* dalloc(size_t n) { return static_cast<T*>(rt().allocate(std::max<size_t>(n, 1) * sizeof(T))); }
template <class T>
inline T* up(const std::vector<T>& h) {
  T* d = dalloc<T>(h.size());
  rt().upload(d, h.data(), h.size() * sizeof(T));
  return d;
}
template <class T>
inline std::vector<T> down(const T* d, size_t n) {
  std::vector<T> h(n);
  rt().download(h.data(), d, n * sizeof(T));
  return h;
}
inline void dfree(void* p) { rt().release(p); }

inline float bitsToF(uint32_t b) { float f; std::memcpy(&f, &b, 4); return f; }
inline uint32_t fToBits(float f) { uint32_t b; std::memcpy(&b, &f, 4); return b; }
inline uint16_t toBf16(float f) {  // round to nearest even, NaN kept quiet
  uint32_t b = fToBits(f);
  if ((b & 0x7fffffffu) > 0x7f800000u) return uint16_t((b >> 16) | 0x40);
  return uint16_t((b + 0x7fffu + ((b >> 16) & 1)) >> 16);
}
inline float bf16ToF(uint16_t h) { return bitsToF(uint32_t(h) << 16); }

struct Cmp {
  double maxErr = 0, maxRef = 0;
  int64_t bad = -1;
  double got = 0, want = 0;
};
/** |got − want| ≤ atol + rtol·|want| + stol·max|want| elementwise (the parity harness' rule). */
template <class A, class B>
inline Cmp compare(const A& got, const B& want, double atol, double rtol, double stol = 0) {
  Cmp c;
  for (size_t i = 0; i < want.size(); ++i) c.maxRef = std::max(c.maxRef, std::fabs(double(want[i])));
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = got[i], w = want[i];
    if (std::isnan(w) && std::isnan(g)) continue;
    const double e = std::fabs(g - w);
    c.maxErr = std::max(c.maxErr, e);
    if (!(e <= atol + rtol * std::fabs(w) + stol * c.maxRef) && c.bad < 0) { c.bad = int64_t(i); c.got = g; c.want = w; }
  }
  return c;
}
inline void reportCmp(const std::string& name, const Cmp& c) {
  char buf[200];
  if (c.bad < 0) std::snprintf(buf, sizeof buf, "max|err| %.3g (max|ref| %.3g)", c.maxErr, c.maxRef);
  else std::snprintf(buf, sizeof buf, "element %lld: got %.9g want %.9g (max|err| %.3g)", (long long)c.bad, c.got, c.want, c.maxErr);
  report(name, c.bad < 0, buf);
}

inline std::mt19937 gRng(1234);
inline std::vector<float> randn(size_t n, float scale = 1.f) {
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(gRng);
  return v;
}
inline std::vector<float> randu(size_t n, float lo = -1.f, float hi = 1.f) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(gRng);
  return v;
}

struct Timer {
  cudaEvent_t a, b;
  Timer() { QK_CHECK(cudaEventCreate(&a)); QK_CHECK(cudaEventCreate(&b)); }
  ~Timer() { cudaEventDestroy(a); cudaEventDestroy(b); }
  /** Median milliseconds of `reps` timed runs after one warm-up. */
  double median(int reps, const std::function<void()>& fn) {
    fn();
    std::vector<double> t;
    for (int i = 0; i < reps; ++i) {
      QK_CHECK(cudaEventRecord(a, S()));
      fn();
      QK_CHECK(cudaEventRecord(b, S()));
      QK_CHECK(cudaEventSynchronize(b));
      float ms = 0;
      QK_CHECK(cudaEventElapsedTime(&ms, a, b));
      t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  }
};

struct Row { std::string what, ours, peer, ratio, note; };
inline std::vector<Row> gTable;
inline std::string fmt(const char* f, double v) { char b[64]; std::snprintf(b, sizeof b, f, v); return b; }

// ------------------------------------------------------------------ extra check files
namespace qk::harness {
struct Extra {
  const char* name;
  void (*check)();  // validation against CPU references (may be null)
  void (*bench)();  // benchmarks appending to gTable (may be null)
};
inline std::vector<Extra>& extras() {
  static std::vector<Extra> v;
  return v;
}
struct Register {
  Register(const char* name, void (*check)(), void (*bench)()) { extras().push_back({name, check, bench}); }
};
}  // namespace qk::harness
