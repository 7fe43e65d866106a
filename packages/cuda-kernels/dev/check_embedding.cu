// Embedding backward (scatter-add of dy rows at ids), both paths against a host reference that does what
// the reference backend does: per id, sum dy rows in position order in f64, round once to f32, skip
// out-of-range ids. The sorted (default) path must match it bit for bit and be bit-identical run to run;
// the legacy float-atomic path must match within float-summation tolerance. Bench: sorted vs atomic.
#include "harness.h"

namespace {

/** Host reference (reference backend order of summation; out-of-range ids skipped like the kernels). */
std::vector<float> embeddingBackwardRef(const std::vector<float>& dy, const std::vector<int32_t>& ids, int dim, int vocab) {
  std::vector<double> acc(size_t(vocab) * dim, 0.0);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) continue;
    for (int d = 0; d < dim; ++d) acc[size_t(ids[i]) * dim + d] += double(dy[i * dim + d]);
  }
  return std::vector<float>(acc.begin(), acc.end());
}

/** Bitwise equality; reports the first differing element. */
void reportBits(const std::string& name, const std::vector<float>& got, const std::vector<float>& want) {
  for (size_t i = 0; i < want.size(); ++i) {
    if (fToBits(got[i]) != fToBits(want[i])) {
      char b[160];
      std::snprintf(b, sizeof b, "element %zu: got %.9g (0x%08x) want %.9g (0x%08x)", i, got[i], fToBits(got[i]), want[i],
                    fToBits(want[i]));
      report(name, false, b);
      return;
    }
  }
  report(name, true, std::to_string(want.size()) + " elements bit-exact");
}

std::vector<float> runBackward(const float* ddy, const int32_t* did, int64_t n, int dim, int vocab, int path) {
  float* gw = dalloc<float>(size_t(vocab) * dim);
  embeddingBackward(S(), ddy, did, n, dim, vocab, gw, path);
  std::vector<float> out = down(gw, size_t(vocab) * dim);
  dfree(gw);
  return out;
}

/** One case: sorted path bit-exact vs the reference and across two runs; atomic path within `stol`. */
void checkCase(const std::string& what, const std::vector<int32_t>& ids, int dim, int vocab, double stol) {
  guarded("embedding backward " + what, [&] {
    const int64_t n = int64_t(ids.size());
    const std::vector<float> dy = randn(size_t(n) * dim);
    float* ddy = up(dy);
    int32_t* did = up(ids);
    const std::vector<float> want = embeddingBackwardRef(dy, ids, dim, vocab);
    const std::vector<float> first = runBackward(ddy, did, n, dim, vocab, EMB_BWD_SORTED);
    reportBits("embedding backward sorted = reference (f64, position order) " + what, first, want);
    reportBits("embedding backward sorted: two runs bit-identical " + what,
               runBackward(ddy, did, n, dim, vocab, EMB_BWD_SORTED), first);
    // The atomic path sums in f32 in arbitrary order: its error grows with the number of repeats per id.
    reportCmp("embedding backward legacy atomic (tolerance) " + what,
              compare(runBackward(ddy, did, n, dim, vocab, EMB_BWD_ATOMIC), want, 1e-6, 1e-5, stol));
    dfree(ddy);
    dfree(did);
  });
}

void check() {
  std::printf("embedding backward: deterministic sorted path and legacy atomic path\n");
  {  // many repeats among 50 ids, two out-of-range ids (skipped), dim below one block of columns
    const int vocab = 1000;
    std::vector<int32_t> ids(517);
    for (auto& id : ids) id = int32_t(gRng() % 50);
    ids[3] = -1;
    ids[400] = vocab;
    checkCase("(517 ids in 50, 2 out of range, dim 96)", ids, 96, vocab, 1e-6);
  }
  {  // dim 300: two column blocks, the second partial; every id unique
    std::vector<int32_t> ids(256);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 7919) % 4001);
    checkCase("(256 unique ids, dim 300)", ids, 300, 4001, 1e-6);
  }
  {  // heavy repetition: every position has the same id; 4096-term f32 sums on the atomic path (~1e-4 abs error)
    std::vector<int32_t> ids(4096, 31999);
    checkCase("(4096 × id 31999, vocab 32000, dim 4096)", ids, 4096, 32000, 1e-5);
  }
  {  // count 0: dweight zero-filled, nothing launched
    float* gw = dalloc<float>(64);
    QK_CHECK(cudaMemsetAsync(gw, 0xff, 64 * sizeof(float), S()));
    embeddingBackward(S(), nullptr, nullptr, 0, 8, 8, gw, EMB_BWD_SORTED);
    const std::vector<float> got = down(gw, 64);
    report("embedding backward count 0 → zeros", std::all_of(got.begin(), got.end(), [](float f) { return f == 0.f; }));
    dfree(gw);
  }
}

void bench() {
  const int vocab = 128256, dim = 4096, n = 4096;
  std::vector<int32_t> ids(n);
  for (auto& id : ids) id = int32_t(gRng() % vocab);
  float* ddy = up(randn(size_t(n) * dim));
  int32_t* did = up(ids);
  float* gw = dalloc<float>(size_t(vocab) * dim);
  Timer t;
  const double sorted = t.median(20, [&] { embeddingBackward(S(), ddy, did, n, dim, vocab, gw, EMB_BWD_SORTED); });
  const double atomic = t.median(20, [&] { embeddingBackward(S(), ddy, did, n, dim, vocab, gw, EMB_BWD_ATOMIC); });
  gTable.push_back({"embedding backward 4096 ids × dim 4096, vocab 128256", fmt("%.3f ms", sorted),
                    fmt("atomic %.3f ms", atomic), fmt("%.2f", sorted / atomic),
                    "deterministic sort + f64 run sums vs float atomicAdd; both include the 2.1 GB dweight memset"});
  dfree(ddy);
  dfree(did);
  dfree(gw);
}

qk::harness::Register reg("embedding", check, bench);

}  // namespace
