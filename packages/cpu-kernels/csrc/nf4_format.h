// A bitsandbytes 4-bit weight W [n, k] as the kernels read it (spec bnb-4bit-format.md §1-§5):
// flat row-major element e lives in byte e/2 (even e: HIGH nibble), its block is e / blocksize
// (blocks ignore row boundaries), and value = fl32(LUT[code] * absmax[block]).
#pragma once
#include <cstdint>
#include <cstring>

#include "rounded.h"

namespace qlora {

// NF4 (§1.1) and FP4 (§1.2) code tables, as float32 bit patterns so they are exact.
inline const float* nf4_lut() {
  static const uint32_t bits[16] = {0xbf800000, 0xbf3239b1, 0xbf066b30, 0xbeca32a0, 0xbe91a24d, 0xbe3d353f,
                                    0xbdba7871, 0x00000000, 0x3da2faff, 0x3e24cae3, 0x3e7c04dd, 0x3ead033a,
                                    0x3ee1a4b8, 0x3f1007ab, 0x3f3913b3, 0x3f800000};
  return reinterpret_cast<const float*>(bits);
}
inline const float* fp4_lut() {
  static const uint32_t bits[16] = {0x00000000, 0x3baaaaab, 0x3f2aaaab, 0x3f800000, 0x3eaaaaab, 0x3f000000,
                                    0x3e2aaaab, 0x3e800000, 0x80000000, 0xbbaaaaab, 0xbf2aaaab, 0xbf800000,
                                    0xbeaaaaab, 0xbf000000, 0xbe2aaaab, 0xbe800000};
  return reinterpret_cast<const float*>(bits);
}

struct Quant4 {
  const uint8_t* codes = nullptr;  // ceil(n*k/2) bytes
  int64_t n = 0, k = 0, blocksize = 64;
  const float* lut = nullptr;       // 16 entries
  const float* absmax = nullptr;    // plain f32 absmax [nBlocks], or null when nested:
  const uint8_t* qabsmax = nullptr; // [nBlocks] indices into code
  const float* code = nullptr;      // [256] signed dynamic map
  const float* nested = nullptr;    // [ceil(nBlocks / nestedBlocksize)]
  int64_t nested_blocksize = 256;
  float offset = 0;

  int64_t blocks() const { return (n * k + blocksize - 1) / blocksize; }

  // §5.4 two-rounding form: fl32(fl32(code[q] * nested[j / 256]) + offset) (rounded(): no FMA, which every
  // AVX2/AVX-512 kernel inlining this header and every arm64 build would otherwise contract it into).
  float absmax_at(int64_t block) const {
    if (absmax) return absmax[block];
    const float scaled = rounded(code[qabsmax[block]] * nested[block / nested_blocksize]);
    return scaled + offset;
  }
};

// Walks consecutive blocks' absmax without the per-block integer division of absmax_at (a 64-bit
// divide per block dominated the GEMV's per-block overhead).
struct AbsmaxCursor {
  const Quant4& q;
  int64_t block, nested_index, nested_rem;
  AbsmaxCursor(const Quant4& w, int64_t first)
      : q(w), block(first), nested_index(first / w.nested_blocksize), nested_rem(first % w.nested_blocksize) {}
  float next() {
    float v;
    if (q.absmax) {
      v = q.absmax[block];
    } else {
      const float scaled = rounded(q.code[q.qabsmax[block]] * q.nested[nested_index]);  // two roundings, as absmax_at
      v = scaled + q.offset;
      if (++nested_rem == q.nested_blocksize) nested_rem = 0, ++nested_index;
    }
    ++block;
    return v;
  }
};

// AbsmaxCursor for kernels that revisit rows in order (the GEMV): the absmax of a block is one table
// load. A double-quantized absmax takes one of 256 values per nested block, fl(fl(code[v] * nested) +
// offset), so the table is built once per nested block (bit-identical to absmax_at) and kept across
// seek() calls. The per-block multiply-add it replaces cost the AVX2 GEMV 2-4 % (bench/ab-builds.ts,
// 4096-wide rows, one thread).
class ScaleCursor {
 public:
  // table: 256 floats the caller owns, so that the cursor itself holds only scalars the compiler keeps in registers
  // (with the table inside it, its counters went through the stack on every block).
  ScaleCursor(const Quant4& w, float* table256) : q(w), table(table256) {}
  void seek(int64_t first) {
    block = first;
    if (q.absmax) return;
    rem = first % q.nested_blocksize;
    const int64_t ni = first / q.nested_blocksize;
    if (ni != loaded) load(ni);
  }
  float next() {
    if (q.absmax) return q.absmax[block++];
    if (rem == q.nested_blocksize) load(loaded + 1), rem = 0;
    ++rem;
    return table[q.qabsmax[block++]];
  }

 private:
  // Four lanes at a time (SSE / NEON through vector extensions): this runs once per nested block, i.e. every
  // 4 rows of a 4096-wide weight. One float at a time it held ~6 % of the AVX2 GEMV's perf samples; 4-wide the
  // GEMV is 1.3-1.6 % faster on one thread (ab-builds.ts, 4096^2 and 14336x4096), within noise on two.
  void load(int64_t nested_index) {
    using f4 = float __attribute__((vector_size(16)));
    const float s = q.nested[nested_index];
    const f4 scale = {s, s, s, s}, offset = {q.offset, q.offset, q.offset, q.offset};
    for (int v = 0; v < 256; v += 4) {
      f4 code;
      std::memcpy(&code, q.code + v, sizeof code);
      const f4 value = rounded(code * scale) + offset;  // two roundings per lane, as absmax_at
      std::memcpy(table + v, &value, sizeof value);
    }
    loaded = nested_index;
  }
  const Quant4& q;
  float* table;
  int64_t block = 0, rem = 0, loaded = -1;
};

// out[i] = dequant(W.flat[start + i]) for i < count (any start parity, any block straddling).
void nf4_decode_run(const Quant4& q, int64_t start, int64_t count, float* out);

}  // namespace qlora
