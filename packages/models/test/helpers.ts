import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Tensor, tensor } from "@qlora/tensor";

export const FIXTURES = new URL("./fixtures/parity/", import.meta.url).pathname;

export interface Fixture {
  header: { model: string; model_sha256: string; torch: string; config: Record<string, unknown> };
  get(name: string): { data: Float32Array | Int32Array; shape: number[] };
  tensor(name: string): Tensor;
}

/** Reads a QLTF v1 fixture written by scripts/make_parity_fixtures.py. */
export function readFixture(name: string): Fixture {
  const path = join(FIXTURES, `${name}.bin`);
  const buf = readFileSync(path);
  if (buf.subarray(0, 4).toString("latin1") !== "QLTF" || buf.readUInt32LE(4) !== 1)
    throw new Error(`${path}: not a QLTF v1 fixture; regenerate with scripts/make_parity_fixtures.py`);
  const len = buf.readUInt32LE(8);
  const header = JSON.parse(buf.subarray(12, 12 + len).toString("utf8"));
  const base = 12 + len;
  const get = (n: string) => {
    const e = header.tensors.find((t: { name: string }) => t.name === n);
    if (!e) throw new Error(`${path}: no tensor ${n}`);
    const bytes = new Uint8Array(buf.subarray(base + e.offset, base + e.offset + e.nbytes)).slice().buffer;
    return { data: e.dtype === "f32" ? new Float32Array(bytes) : new Int32Array(bytes), shape: e.shape as number[] };
  };
  return {
    header,
    get,
    tensor: (n) => {
      const f = get(n);
      return tensor(f.data, { shape: f.shape, dtype: f.data instanceof Int32Array ? "i32" : "f32" });
    },
  };
}

/** max |a − b| / max |b|. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let worst = 0;
  let scale = 0;
  for (let i = 0; i < b.length; i++) {
    worst = Math.max(worst, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return worst / scale;
}

export function sha256(path: string): string {
  return createHash("sha256").update(readFileSync(path)).digest("hex");
}

export function tempDir(prefix = "qlora-models-"): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}
