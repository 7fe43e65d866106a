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

function fillWords(seed: number, offset: number, n: number, each: (block: Uint32Array, base: number) => void): void {
  const key = [(seed % TWO_32) >>> 0, Math.floor(seed / TWO_32) >>> 0];
  const block = new Uint32Array(4);
  const firstBlock = Math.floor(offset / 4);
  const nBlocks = Math.ceil(n / 4);
  for (let b = 0; b < nBlocks; b++) {
    const ctr = firstBlock + b;
    philox4x32([(ctr % TWO_32) >>> 0, Math.floor(ctr / TWO_32) >>> 0, 0, 0], key, block);
    each(block, b * 4);
  }
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
  /** n uniforms in [0, 1) at the current offset; advances the offset. */
  uniform(n: number): Float32Array {
    if (this.offset % 4 !== 0) this.offset += 4 - (this.offset % 4);
    const out = new Float32Array(n);
    fillWords(this.seed, this.offset, n, (w, base) => {
      for (let j = 0; j < 4 && base + j < n; j++) out[base + j] = (w[j] >>> 8) * 2 ** -24;
    });
    this.offset += 4 * Math.ceil(n / 4);
    return out;
  }
  /** n standard normals (Box-Muller on word pairs); advances the offset. */
  normal(n: number): Float32Array {
    if (this.offset % 4 !== 0) this.offset += 4 - (this.offset % 4);
    const out = new Float32Array(n);
    fillWords(this.seed, this.offset, n, (w, base) => {
      for (let p = 0; p < 2; p++) {
        const u1 = ((w[2 * p] >>> 8) + 1) * 2 ** -24;
        const u2 = (w[2 * p + 1] >>> 8) * 2 ** -24;
        const r = Math.sqrt(-2 * Math.log(u1));
        const i = base + 2 * p;
        if (i < n) out[i] = r * Math.cos(2 * Math.PI * u2);
        if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * u2);
      }
    });
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
