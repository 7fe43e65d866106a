import { Nf4Error } from "./errors";
import { describe } from "./internal/validate";

/** Packs 4-bit codes (0..15) two per byte, element 2j in the high nibble; odd n pads with `pad` (default 0). */
export function packNibbles(codes: Uint8Array, pad = 0): Uint8Array {
  if (!(codes instanceof Uint8Array)) {
    throw new Nf4Error("INVALID_ARGUMENT", `codes: expected a Uint8Array of 4-bit codes, got ${describe(codes)}`);
  }
  const n = codes.length;
  const out = new Uint8Array(Math.ceil(n / 2));
  for (let i = 0; i < n; i++) {
    const c = codes[i];
    if (c > 15) throw new Nf4Error("INVALID_ARGUMENT", `codes[${i}]: expected a 4-bit code 0..15, got ${c}`);
  }
  let j = 0;
  for (let i = 0; i + 1 < n; i += 2) out[j++] = (codes[i] << 4) | codes[i + 1];
  if (n % 2 === 1) out[j] = (codes[n - 1] << 4) | (pad & 15);
  return out;
}

/** Unpacks the first `n` 4-bit codes (high nibble first). */
export function unpackNibbles(packed: Uint8Array, n: number = packed.length * 2): Uint8Array {
  if (!(packed instanceof Uint8Array)) {
    throw new Nf4Error("INVALID_ARGUMENT", `packed: expected a Uint8Array, got ${describe(packed)}`);
  }
  if (!Number.isSafeInteger(n) || n < 0 || Math.ceil(n / 2) > packed.length) {
    throw new Nf4Error(
      "LENGTH_MISMATCH",
      `n: expected an integer 0..${packed.length * 2} (2 codes per packed byte), got ${describe(n)}`,
    );
  }
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = i % 2 === 0 ? packed[i >> 1] >> 4 : packed[i >> 1] & 15;
  return out;
}
