// Run decoder used by the 4-bit GEMM packers. Its cost is O(n*k) per GEMM (amortised over the m rows
// of x), which still shows for mid-size m (a few hundred tokens): with AVX2, whole 64-weight chunks
// of a block (even start, 32 packed bytes) are decoded with vpshufb on the LUT's byte planes, the
// rest by the scalar loop. Both compute out = fl32(LUT[code] * absmax) with one multiply, so they
// agree bit for bit (and with the spec).
#include <algorithm>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "isa.h"
#include "nf4_format.h"

namespace qlora {
namespace {

#if defined(__x86_64__)
// 64 weights from 32 packed bytes, natural order: byte u holds weights 2u (high nibble) and 2u + 1.
// Interleaving the high and low nibble indices (unpacklo/hi_epi8) gives per 128-bit lane 16 codes in
// order; four vpshufb look up the LUT's byte planes and two unpack rounds rebuild the floats, lane-split,
// which vperm2f128 puts back in order.
struct Avx2Decoder {
  __m256i t0, t1, t2, t3, nib;

  __attribute__((target("avx2,fma"))) explicit Avx2Decoder(const float* lut) {
    // The byte planes of the last LUT seen, cached per thread: a packer decodes one short run (kc
    // weights) per call, and rebuilding 128 bytes each time cost more than decoding them.
    alignas(32) static thread_local uint8_t planes[4][32];
    static thread_local const float* planes_of = nullptr;
    if (planes_of != lut) {
      const auto* bytes = reinterpret_cast<const uint8_t*>(lut);
      for (int p = 0; p < 4; ++p)
        for (int i = 0; i < 32; ++i) planes[p][i] = bytes[(i & 15) * 4 + p];
      planes_of = lut;
    }
    t0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(planes[0]));
    t1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(planes[1]));
    t2 = _mm256_load_si256(reinterpret_cast<const __m256i*>(planes[2]));
    t3 = _mm256_load_si256(reinterpret_cast<const __m256i*>(planes[3]));
    nib = _mm256_set1_epi8(0x0f);
  }

  // codes: per lane 16 code bytes; f[n] lane l = LUT[codes lane l, 4n .. 4n + 3].
  __attribute__((target("avx2,fma"))) void lookup(__m256i codes, __m256 f[4]) const {
    const __m256i b0 = _mm256_shuffle_epi8(t0, codes), b1 = _mm256_shuffle_epi8(t1, codes);
    const __m256i b2 = _mm256_shuffle_epi8(t2, codes), b3 = _mm256_shuffle_epi8(t3, codes);
    const __m256i w01l = _mm256_unpacklo_epi8(b0, b1), w01h = _mm256_unpackhi_epi8(b0, b1);
    const __m256i w23l = _mm256_unpacklo_epi8(b2, b3), w23h = _mm256_unpackhi_epi8(b2, b3);
    f[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(w01l, w23l));
    f[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(w01l, w23l));
    f[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(w01h, w23h));
    f[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(w01h, w23h));
  }

  __attribute__((target("avx2,fma"))) void chunk64(const uint8_t* packed, float scale, float* out) const {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(packed));
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib), lo = _mm256_and_si256(v, nib);
    const __m256 s = _mm256_set1_ps(scale);
    __m256 a[4], b[4];
    lookup(_mm256_unpacklo_epi8(hi, lo), a);  // lane 0: weights 0..15, lane 1: 32..47
    lookup(_mm256_unpackhi_epi8(hi, lo), b);  // lane 0: weights 16..31, lane 1: 48..63
    for (int n = 0; n < 4; n += 2) {
      _mm256_storeu_ps(out + 4 * n, _mm256_mul_ps(_mm256_permute2f128_ps(a[n], a[n + 1], 0x20), s));
      _mm256_storeu_ps(out + 32 + 4 * n, _mm256_mul_ps(_mm256_permute2f128_ps(a[n], a[n + 1], 0x31), s));
      _mm256_storeu_ps(out + 16 + 4 * n, _mm256_mul_ps(_mm256_permute2f128_ps(b[n], b[n + 1], 0x20), s));
      _mm256_storeu_ps(out + 48 + 4 * n, _mm256_mul_ps(_mm256_permute2f128_ps(b[n], b[n + 1], 0x31), s));
    }
  }
};

// The block walk of nf4_decode_run with whole 64-weight chunks (even start) decoded by chunk64.
__attribute__((target("avx2,fma"))) void decode_run_avx2(const Quant4& q, int64_t start, int64_t count, float* out) {
  const Avx2Decoder dec(q.lut);
  const float* lut = q.lut;
  int64_t block = start / q.blocksize;  // one division per run: absmax_at divided twice per block
  AbsmaxCursor absmax(q, block);
  for (; count > 0; ++block) {
    const int64_t seg = std::min(count, (block + 1) * q.blocksize - start);
    const float scale = absmax.next();
    int64_t e = start, i = 0;
    if (e & 1) {
      out[i++] = lut[q.codes[e >> 1] & 15] * scale;
      ++e;
    }
    for (; i + 64 <= seg; i += 64, e += 64) dec.chunk64(q.codes + (e >> 1), scale, out + i);
    for (; i + 1 < seg; i += 2, e += 2) {
      const uint8_t byte = q.codes[e >> 1];
      out[i] = lut[byte >> 4] * scale;
      out[i + 1] = lut[byte & 15] * scale;
    }
    if (i < seg) out[i++] = lut[q.codes[e >> 1] >> 4] * scale;
    out += seg;
    start += seg;
    count -= seg;
  }
}
#endif

}  // namespace

void nf4_decode_run(const Quant4& q, int64_t start, int64_t count, float* out) {
#if defined(__x86_64__)
  if (count >= 64 && q.blocksize >= 64 && isa().avx2_fma) return decode_run_avx2(q, start, count, out);
#endif
  const float* lut = q.lut;
  int64_t block = start / q.blocksize;
  AbsmaxCursor absmax(q, block);
  for (; count > 0; ++block) {
    const int64_t seg = std::min(count, (block + 1) * q.blocksize - start);
    const float scale = absmax.next();
    int64_t e = start, i = 0;
    if (e & 1) {  // starts on a low nibble
      out[i++] = lut[q.codes[e >> 1] & 15] * scale;
      ++e;
    }
    for (; i + 1 < seg; i += 2, e += 2) {  // whole bytes: high nibble first
      const uint8_t byte = q.codes[e >> 1];
      out[i] = lut[byte >> 4] * scale;
      out[i + 1] = lut[byte & 15] * scale;
    }
    if (i < seg) out[i++] = lut[q.codes[e >> 1] >> 4] * scale;  // ends on a high nibble
    out += seg;
    start += seg;
    count -= seg;
  }
}

}  // namespace qlora
