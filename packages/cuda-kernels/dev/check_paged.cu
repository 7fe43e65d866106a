// Paged optimizer states (cudaMallocManaged, prefetched to the device before each update: what
// csrc/napi/ops.cc does for managed AdamW states). Compiled, unverified on a GPU.
//  "paged" (default, safe: small managed allocations, far below free memory):
//    32-bit AdamW over managed m/v, host reads/writes of the states between steps (pages migrate to the
//    host and back), against a host torch-AdamW reference and bit for bit against the same steps on
//    cudaMalloc states; 8-bit AdamW over managed state1/state2/absmax, bit for bit against device states;
//    prefetch location and managed-bytes statistics.
//  "paged eviction" (only with QLORA_GPU_CHECK_EVICTION=1, else a SKIP line): forces the driver to evict
//    managed pages, see checkEviction().
#include <chrono>
#include <cstdlib>

#include "harness.h"

namespace {

constexpr size_t kMiB = size_t(1) << 20, kGiB = size_t(1) << 30;
constexpr float kLr = 1e-3f, kB1 = 0.9f, kB2 = 0.999f, kEps = 1e-8f, kWd = 0.01f;

// Inputs are a pure function of the element index, so the 128M-element eviction case needs no stored
// reference copies: splitmix64 → uniform in [-1, 1).
float hashUniform(uint64_t i, uint64_t salt) {
  uint64_t z = i * 0x9e3779b97f4a7c15ull + salt * 0xbf58476d1ce4e5b9ull + 0x94d049bb133111ebull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return float(double(z >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}
float initParam(size_t i) { return hashUniform(i, 1); }
float gradAt(size_t i) { return 0.05f * hashUniform(i, 2); }

struct Ref { double p, m, v; };
constexpr int kMaxSteps = 8;
/** Bias corrections 1 − β^t for t = 1..kMaxSteps (pow once, not per element: 128M elements in the eviction case). */
struct BiasCorrection {
  double bc1[kMaxSteps + 1], sqrtBc2[kMaxSteps + 1];
  BiasCorrection() {
    for (int t = 1; t <= kMaxSteps; ++t) { bc1[t] = 1 - std::pow(0.9, t); sqrtBc2[t] = std::sqrt(1 - std::pow(0.999, t)); }
  }
};
const BiasCorrection kBc;
/** torch.optim.AdamW in f64 (the existing adamw32 check's formula), m = v = 0 at step 0, same grad each step. */
Ref adamwRef(size_t i, int steps) {
  double p = initParam(i), m = 0, v = 0;
  const double g = gradAt(i);
  for (int t = 1; t <= steps; ++t) {
    p *= 1 - 1e-3 * 0.01;
    m = 0.9 * m + 0.1 * g;
    v = 0.999 * v + 0.001 * g * g;
    p -= (1e-3 / kBc.bc1[t]) * m / (std::sqrt(v) / kBc.sqrtBc2[t] + 1e-8);
  }
  return {p, m, v};
}

/** Streaming version of harness compare() (no stol): no reference vector is ever materialised. */
struct Acc {
  double atol, rtol;
  Cmp c;
  void add(size_t i, double got, double want) {
    const double e = std::fabs(got - want);
    c.maxErr = std::max(c.maxErr, e);
    c.maxRef = std::max(c.maxRef, std::fabs(want));
    if (!(e <= atol + rtol * std::fabs(want)) && c.bad < 0) { c.bad = int64_t(i); c.got = got; c.want = want; }
  }
};

/** p/m/v after `steps` against the reference (tolerances of the adamw32 check in gpu_check.cu). */
void checkAgainstRef(const std::string& what, const float* p, const float* m, const float* v, size_t n, int steps) {
  Acc ap{1e-6, 1e-5, {}}, am{1e-7, 1e-5, {}}, av{1e-9, 1e-5, {}};
  for (size_t i = 0; i < n; ++i) {
    const Ref r = adamwRef(i, steps);
    ap.add(i, p[i], r.p);
    am.add(i, m[i], r.m);
    av.add(i, v[i], r.v);
  }
  reportCmp(what + " param", ap.c);
  reportCmp(what + " m", am.c);
  reportCmp(what + " v", av.c);
}

template <class T>
bool sameBits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

AdamW optsAt(int step) { return AdamW{kLr, kB1, kB2, kEps, kWd, step}; }

void prefetch(const void* p, size_t bytes, bool managed) {
  if (managed) rt().prefetchToDevice(p, bytes);
}

struct Adam32Result { std::vector<float> p, m, v; };

/** `steps` 32-bit updates of p0/g; managed: m/v from cudaMallocManaged, prefetched before every step,
 * read and rewritten by the host after every step (and m checked against the reference there). */
Adam32Result runAdam32(size_t n, int steps, bool managed) {
  std::vector<float> p0(n), g(n);
  for (size_t i = 0; i < n; ++i) { p0[i] = initParam(i); g[i] = gradAt(i); }
  float *dp = up(p0), *dg = up(g);
  const size_t bytes = n * sizeof(float);
  float* m = static_cast<float*>(managed ? rt().allocateManaged(bytes) : rt().allocate(bytes));
  float* v = static_cast<float*>(managed ? rt().allocateManaged(bytes) : rt().allocate(bytes));
  QK_CHECK(cudaMemsetAsync(m, 0, bytes, S()));  // as the addon's alloc does: zero-filled on the compute stream
  QK_CHECK(cudaMemsetAsync(v, 0, bytes, S()));
  Acc hostSeen{1e-7, 1e-5, {}};
  for (int t = 1; t <= steps; ++t) {
    prefetch(m, bytes, managed);
    prefetch(v, bytes, managed);
    adamw32(S(), dp, dg, m, v, int64_t(n), optsAt(t));
    if (!managed) continue;
    QK_CHECK(cudaStreamSynchronize(S()));
    for (size_t i = 0; i < n; i += 7) hostSeen.add(i, m[i], adamwRef(i, t).m);  // host read: pages come back
    volatile float* vv = v;
    for (size_t i = 0; i < n; i += 1024) vv[i] = vv[i];  // host write of every page: the next prefetch moves them again
  }
  if (managed) reportCmp("paged adamw32: host reads of m between steps", hostSeen.c);
  Adam32Result r{down(dp, n), down(m, n), down(v, n)};
  if (managed) {
    rt().prefetchToDevice(m, bytes);
    QK_CHECK(cudaStreamSynchronize(S()));
    int id = -7;
    QK_CHECK(cudaMemRangeGetAttribute(&id, sizeof id, cudaMemRangeAttributeLastPrefetchLocation, m, bytes));
    report("paged adamw32: last prefetch location is the device", !rt().concurrentManagedAccess() || id == rt().device(),
           rt().concurrentManagedAccess() ? "location " + std::to_string(id) : "no concurrent managed access: prefetch is a no-op");
    rt().releaseManaged(m);
    rt().releaseManaged(v);
  } else {
    dfree(m);
    dfree(v);
  }
  dfree(dp);
  dfree(dg);
  return r;
}

std::vector<float> mapOf(const uint32_t (&bits)[256]) {
  std::vector<float> m(256);
  for (int i = 0; i < 256; ++i) m[i] = bitsToF(bits[i]);
  return m;
}

struct Adam8Result { std::vector<float> p, a1, a2; std::vector<uint8_t> s1, s2; };

/** `steps` 8-bit updates; managed: all four state buffers managed, prefetched, host-touched between steps. */
Adam8Result runAdam8(size_t n, int steps, bool managed) {
  const size_t nb = (n + 255) / 256;
  std::vector<float> p0(n), g(n);
  for (size_t i = 0; i < n; ++i) { p0[i] = initParam(i); g[i] = gradAt(i); }
  float *dp = up(p0), *dg = up(g), *q1 = up(mapOf(kSignedMapBits)), *q2 = up(mapOf(kUnsignedMapBits));
  const size_t sizes[4] = {n, n, nb * 4, nb * 4};
  void* st[4];
  for (int k = 0; k < 4; ++k) {
    st[k] = managed ? rt().allocateManaged(sizes[k]) : rt().allocate(sizes[k]);
    QK_CHECK(cudaMemsetAsync(st[k], 0, sizes[k], S()));
  }
  auto* s1 = static_cast<uint8_t*>(st[0]);
  auto* s2 = static_cast<uint8_t*>(st[1]);
  auto* a1 = static_cast<float*>(st[2]);
  auto* a2 = static_cast<float*>(st[3]);
  for (int t = 1; t <= steps; ++t) {
    for (int k = 0; k < 4; ++k) prefetch(st[k], sizes[k], managed);
    adamw8bit(S(), dp, dg, s1, s2, a1, a2, q1, q2, int64_t(n), optsAt(t));
    if (!managed) continue;
    QK_CHECK(cudaStreamSynchronize(S()));
    for (int k = 0; k < 4; ++k) {  // host write of every page of every state (value unchanged)
      volatile uint8_t* b = static_cast<uint8_t*>(st[k]);
      for (size_t i = 0; i < sizes[k]; i += 1024) b[i] = b[i];
    }
  }
  Adam8Result r{down(dp, n), down(a1, nb), down(a2, nb), down(s1, n), down(s2, n)};
  for (int k = 0; k < 4; ++k) managed ? rt().releaseManaged(st[k]) : rt().release(st[k]);
  for (void* q : {(void*)dp, (void*)dg, (void*)q1, (void*)q2}) dfree(q);
  return r;
}

void checkPagedDefault() {
  // Provider rule: never ask for more managed memory than the card has free. These checks ask for ~25 MiB of
  // managed memory in all, but they run in the same process after every other check, whose cached (or leaked)
  // blocks may hold most of the card: refuse to make any managed request unless ≥ 1 GiB is free.
  size_t freeB = 0, total = 0;
  rt().memGetInfo(&freeB, &total);
  if (freeB < kGiB) {
    rt().emptyCache();
    rt().memGetInfo(&freeB, &total);
  }
  if (freeB < kGiB) {
    report("paged: >= 1 GiB free before any managed request", false, fmt("%.3f GiB free", freeB / double(kGiB)));
    return;
  }
  guarded("paged adamw32", [] {
    const size_t n = 3000017;  // ≥ 1e5 (the paging threshold), not a multiple of anything
    const size_t managed0 = rt().stats().managedBytes;
    const Adam32Result paged = runAdam32(n, 4, true);
    report("paged adamw32: managed bytes back to their start after release", rt().stats().managedBytes == managed0);
    checkAgainstRef("paged adamw32 (4 steps) vs torch AdamW reference:", paged.p.data(), paged.m.data(), paged.v.data(), n, 4);
    const Adam32Result plain = runAdam32(n, 4, false);
    report("paged adamw32 = cudaMalloc states, bit for bit (param, m, v)",
           sameBits(paged.p, plain.p) && sameBits(paged.m, plain.m) && sameBits(paged.v, plain.v));
  });
  guarded("paged adamw8bit", [] {
    const size_t n = 256 * 1000 + 13;
    const Adam8Result paged = runAdam8(n, 3, true), plain = runAdam8(n, 3, false);
    report("paged adamw8bit = cudaMalloc states, bit for bit (param, state1/2, absmax1/2)",
           sameBits(paged.p, plain.p) && sameBits(paged.s1, plain.s1) && sameBits(paged.s2, plain.s2) &&
               sameBits(paged.a1, plain.a1) && sameBits(paged.a2, plain.a2));
  });
}

/** Everything the eviction check took from the driver, returned even when a step throws. */
struct Hold {
  std::vector<void*> raw;      // cudaMalloc: the filler and param/grad
  std::vector<void*> managed;  // cudaMallocManaged: m, v
  ~Hold() {  // never throws: errors here are reported by whatever failed first
    cudaDeviceSynchronize();
    for (void* p : raw) cudaFree(p);
    for (void* p : managed) {
      try {
        rt().releaseManaged(p);
      } catch (const std::exception&) {
        cudaGetLastError();
      }
    }
  }
};

// Eviction: the GPU provider's rule is "never ask for more managed memory than the card has free" (a
// program that does can hang the GPU), so the managed request below is always smaller than the free
// memory at the moment it is made, and the check refuses to run otherwise. Eviction is then forced by
// what comes after the request:
//   1. fill the card with cudaMalloc until ~1.5 GiB is free;
//   2. cudaMallocManaged m and v, 512 MiB each (1 GiB < 1.5 GiB free), zeroed by the HOST, so their
//      pages live in host memory and the card's free memory is unchanged;
//   3. cudaMalloc param and grad, 512 MiB each: ~0.5 GiB stays free;
//   4. each AdamW step prefetches m and v (1 GiB) and the kernel touches all of them, but only ~0.5 GiB
//      of device memory is available to managed pages: the driver has to evict managed pages (to the
//      host) while it migrates others in, within and between kernels. Working set 2 GiB > 1.5 GiB free.
// Success: the steps complete and param/m/v match the host reference.
void checkEviction() {
  const char* env = std::getenv("QLORA_GPU_CHECK_EVICTION");
  if (env == nullptr || std::strcmp(env, "1") != 0) {
    std::printf("  [SKIP] paged eviction (fills the card; run with QLORA_GPU_CHECK_EVICTION=1)\n");
    return;
  }
  guarded("paged eviction", [] {
    constexpr size_t kLeave = 3 * kGiB / 2, kStateBytes = 512 * kMiB, n = kStateBytes / sizeof(float);
    constexpr int kSteps = 3;
    rt().emptyCache();  // the allocator's cached blocks would otherwise count as used
    Hold hold;
    size_t freeB = 0, total = 0;
    rt().memGetInfo(&freeB, &total);
    const size_t free0 = freeB;
    for (int guard = 0; guard < 4096 && freeB > kLeave + 64 * kMiB; ++guard) {  // bounded even if free stalls
      const size_t chunk = std::max<size_t>(64 * kMiB, std::min<size_t>(kGiB, (freeB - kLeave) / (64 * kMiB) * 64 * kMiB));
      void* p = nullptr;
      if (cudaMalloc(&p, chunk) != cudaSuccess) { cudaGetLastError(); break; }
      hold.raw.push_back(p);
      rt().memGetInfo(&freeB, &total);
    }
    char info[200];
    std::snprintf(info, sizeof info, "free %.2f GiB of %.1f GiB → %.2f GiB after the cudaMalloc filler", free0 / double(kGiB),
                  total / double(kGiB), freeB / double(kGiB));
    std::printf("  paged eviction: %s\n", info);
    if (2 * kStateBytes >= freeB) {  // the provider's rule, checked before any managed request
      report("paged eviction: managed request below free memory", false, info);
      return;
    }
    for (int k = 0; k < 2; ++k) {
      hold.managed.push_back(rt().allocateManaged(kStateBytes));
      std::memset(hold.managed.back(), 0, kStateBytes);  // host first touch: pages in host memory
    }
    float *m = static_cast<float*>(hold.managed[0]), *v = static_cast<float*>(hold.managed[1]);
    std::vector<float> host(n);
    float* pg[2] = {nullptr, nullptr};
    for (int k = 0; k < 2; ++k) {
      QK_CHECK(cudaMalloc(reinterpret_cast<void**>(&pg[k]), kStateBytes));
      hold.raw.push_back(pg[k]);
      for (size_t i = 0; i < n; ++i) host[i] = k == 0 ? initParam(i) : gradAt(i);
      QK_CHECK(cudaMemcpy(pg[k], host.data(), kStateBytes, cudaMemcpyHostToDevice));
    }
    rt().memGetInfo(&freeB, &total);
    std::printf("  paged eviction: %.2f GiB free for 1 GiB of managed states (working set 2 GiB)\n", freeB / double(kGiB));
    std::string times;
    for (int t = 1; t <= kSteps; ++t) {
      const auto t0 = std::chrono::steady_clock::now();
      rt().prefetchToDevice(m, kStateBytes);
      rt().prefetchToDevice(v, kStateBytes);
      adamw32(S(), pg[0], pg[1], m, v, int64_t(n), optsAt(t));
      QK_CHECK(cudaStreamSynchronize(S()));
      times += fmt(" %.0f ms", std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    report("paged eviction: " + std::to_string(kSteps) + " AdamW steps completed", true, "step times" + times);
    QK_CHECK(cudaMemcpy(host.data(), pg[0], kStateBytes, cudaMemcpyDeviceToHost));
    checkAgainstRef("paged eviction (128M elements) vs torch AdamW reference:", host.data(), m, v, n, kSteps);
  });
}

void check() {
  std::printf("paged optimizer states (managed memory)\n");
  checkPagedDefault();
  checkEviction();
}

qk::harness::Register reg("paged", check, nullptr);

}  // namespace
