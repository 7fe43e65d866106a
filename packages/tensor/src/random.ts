/**
 * Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", Random123), the
 * counter-based generator behind every random tensor. Because it is counter based, any device can
 * produce the same numbers for the same (seed, offset) without sharing state.
 *
 * Exact mapping (the contract a device kernel must reproduce):
 * - key = [seed mod 2^32, floor(seed / 2^32) mod 2^32]   (seed: a non-negative integer < 2^53)
 * - element e (e = generator offset + i for the i-th element of a request) belongs to block
 *   b = floor(e / 4); counter = [b mod 2^32, floor(b / 2^32), 0, 0]; word w = philox(counter, key)[e mod 4].
 * - uniform(e) = (w >>> 8) · 2^-24, in [0, 1), exactly representable in f32.
 * - normal: words are paired within a block, (w0, w1) and (w2, w3). For a pair (wa, wb):
 *   u1 = ((wa >>> 8) + 1) · 2^-24 in (0, 1], u2 = (wb >>> 8) · 2^-24,
 *   r = sqrt(-2 ln u1), z_a = r cos(2π u2), z_b = r sin(2π u2)  (Box-Muller, computed in f64, stored f32).
 * - Each request starts block aligned: after drawing n numbers the offset advances by 4·ceil(n/4).
 */

const M0 = 0xd2511f53;
const M1 = 0xcd9e8d57;
const W0 = 0x9e3779b9;
const W1 = 0xbb67ae85;

function mulhi(a: number, b: number): number {
  const aLo = a & 0xffff;
  const aHi = a >>> 16;
  const bLo = b & 0xffff;
  const bHi = b >>> 16;
  const p0 = aLo * bLo;
  const p1 = aLo * bHi;
  const p2 = aHi * bLo;
  const p3 = aHi * bHi;
  const mid = (p0 >>> 16) + (p1 & 0xffff) + (p2 & 0xffff);
  return (p3 + (p1 >>> 16) + (p2 >>> 16) + (mid >>> 16)) >>> 0;
}

/** One Philox-4x32-10 block: 4 counter words, 2 key words → 4 output words (unsigned 32-bit). */
export function philox4x32(
  counter: readonly number[],
  key: readonly number[],
  out: Uint32Array = new Uint32Array(4),
): Uint32Array {
  let c0 = counter[0] >>> 0;
  let c1 = counter[1] >>> 0;
  let c2 = counter[2] >>> 0;
  let c3 = counter[3] >>> 0;
  let k0 = key[0] >>> 0;
  let k1 = key[1] >>> 0;
  for (let r = 0; r < 10; r++) {
    if (r > 0) {
      k0 = (k0 + W0) >>> 0;
      k1 = (k1 + W1) >>> 0;
    }
    const hi0 = mulhi(M0, c0);
    const lo0 = Math.imul(M0, c0) >>> 0;
    const hi1 = mulhi(M1, c2);
    const lo1 = Math.imul(M1, c2) >>> 0;
    c0 = (hi1 ^ c1 ^ k0) >>> 0;
    c1 = lo1;
    c2 = (hi0 ^ c3 ^ k1) >>> 0;
    c3 = lo0;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
  return out;
}

const TWO_32 = 4294967296;
const M0_LO = M0 & 0xffff;
const M0_HI = M0 >>> 16;
const M1_LO = M1 & 0xffff;
const M1_HI = M1 >>> 16;

/**
 * The Philox words of elements [offset, offset + 4·ceil(n/4)) for `seed` (offset block aligned), in order: philox4x32
 * unrolled over whole blocks with its round keys computed once and the constant multipliers split in advance. A hot
 * path: every random tensor and dropout mask comes through here.
 */
function philoxWords(seed: number, offset: number, n: number): Uint32Array {
  const nBlocks = Math.ceil(n / 4);
  const out = new Uint32Array(nBlocks * 4);
  const k0 = new Uint32Array(10);
  const k1 = new Uint32Array(10);
  k0[0] = seed % TWO_32;
  k1[0] = Math.floor(seed / TWO_32);
  for (let r = 1; r < 10; r++) {
    k0[r] = k0[r - 1] + W0;
    k1[r] = k1[r - 1] + W1;
  }
  const first = Math.floor(offset / 4);
  let lo = first % TWO_32;
  let hi = Math.floor(first / TWO_32);
  for (let b = 0, o = 0; b < nBlocks; b++, o += 4) {
    let c0 = lo;
    let c1 = hi;
    let c2 = 0;
    let c3 = 0;
    for (let r = 0; r < 10; r++) {
      // hi and lo halves of M0·c0 and M1·c2 (32×32 → 64 bits) from 16-bit pieces, exact in doubles
      const a0 = c0 & 0xffff;
      const a1 = c0 >>> 16;
      const q0 = M0_LO * a0;
      const q1 = M0_LO * a1;
      const q2 = M0_HI * a0;
      const mid0 = (q0 >>> 16) + (q1 & 0xffff) + (q2 & 0xffff);
      const hi0 = (M0_HI * a1 + (q1 >>> 16) + (q2 >>> 16) + (mid0 >>> 16)) >>> 0;
      const lo0 = Math.imul(M0, c0) >>> 0;
      const d0 = c2 & 0xffff;
      const d1 = c2 >>> 16;
      const s0 = M1_LO * d0;
      const s1 = M1_LO * d1;
      const s2 = M1_HI * d0;
      const mid1 = (s0 >>> 16) + (s1 & 0xffff) + (s2 & 0xffff);
      const hi1 = (M1_HI * d1 + (s1 >>> 16) + (s2 >>> 16) + (mid1 >>> 16)) >>> 0;
      const lo1 = Math.imul(M1, c2) >>> 0;
      c0 = (hi1 ^ c1 ^ k0[r]) >>> 0;
      c1 = lo1;
      c2 = (hi0 ^ c3 ^ k1[r]) >>> 0;
      c3 = lo0;
    }
    out[o] = c0;
    out[o + 1] = c1;
    out[o + 2] = c2;
    out[o + 3] = c3;
    if (++lo === TWO_32) {
      lo = 0;
      hi++;
    }
  }
  return out;
}

/** A seeded counter-based generator: (seed, offset) is its whole state. */
export class Generator {
  constructor(
    public seed: number,
    public offset = 0,
  ) {
    if (!Number.isSafeInteger(seed) || seed < 0)
      throw new RangeError(`Generator seed must be a non-negative safe integer, got ${seed}`);
  }
  /**
   * The (block aligned) offset of the next `n` elements, advancing past them as a draw of n would: for a device that
   * draws them itself from (seed, offset).
   */
  reserve(n: number): number {
    if (this.offset % 4 !== 0) this.offset += 4 - (this.offset % 4);
    const at = this.offset;
    this.offset += 4 * Math.ceil(n / 4);
    return at;
  }
  /** n uniforms in [0, 1) at the current offset; advances the offset. */
  uniform(n: number): Float32Array {
    if (this.offset % 4 !== 0) this.offset += 4 - (this.offset % 4);
    const w = philoxWords(this.seed, this.offset, n);
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = (w[i] >>> 8) * 2 ** -24;
    this.offset += 4 * Math.ceil(n / 4);
    return out;
  }
  /** n standard normals (Box-Muller on word pairs); advances the offset. */
  normal(n: number): Float32Array {
    if (this.offset % 4 !== 0) this.offset += 4 - (this.offset % 4);
    const w = philoxWords(this.seed, this.offset, n);
    const out = new Float32Array(n);
    for (let i = 0; i < n; i += 2) {
      const u1 = ((w[i] >>> 8) + 1) * 2 ** -24;
      const u2 = (w[i + 1] >>> 8) * 2 ** -24;
      const r = Math.sqrt(-2 * Math.log(u1));
      out[i] = r * Math.cos(2 * Math.PI * u2);
      if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * u2);
    }
    this.offset += 4 * Math.ceil(n / 4);
    return out;
  }
  clone(): Generator {
    return new Generator(this.seed, this.offset);
  }
}

let globalGenerator = new Generator(0);

/** Reseed the global generator (offset back to 0). */
export function manualSeed(seed: number): Generator {
  globalGenerator = new Generator(seed);
  return globalGenerator;
}
export function getGenerator(): Generator {
  return globalGenerator;
}
/** Replace the global generator (used by checkpoint() to replay random ops exactly). */
export function setGenerator(g: Generator): void {
  globalGenerator = g;
}
