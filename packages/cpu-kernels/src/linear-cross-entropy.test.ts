// linearCrossEntropy on the cpu backend (native GEMM + csrc/xent.cc crossEntropyGradInPlace per chunk)
// against the same op on the reference backend, on odd shapes up to a few hundred; and the fused chunk
// kernel itself against the reference implementation, for every ISA level this machine can run.
import {
  type Backend,
  type HostBuffer,
  linearCrossEntropyOp,
  referenceBackend,
  tensor,
  TensorError,
  linearCrossEntropy,
} from "@qlora/tensor";
import { assertOpParity, TOL_ACC } from "@qlora/tensor/testing";
import { afterAll, describe, expect, it } from "vitest";
import { cpuBackend, cpuBackendInfo } from "./backend";
import { createFusedOps, type FusedNative } from "./fused";
import { loadNative } from "./load";
import { rand } from "./rand.test-util";

const native = loadNative() as unknown as FusedNative;
const fused = createFusedOps(() => native, referenceBackend) as Backend;
const LEVELS = [2, 1, 0];
const runnable = LEVELS.filter((l) => native.setFusedIsaLevel(l) === l);
native.setFusedIsaLevel(2);
afterAll(() => native.setFusedIsaLevel(2));

function labels(n: number, vocab: number, seed: number): Int32Array {
  const u = rand(n, seed, 0, vocab);
  return Int32Array.from(u, (v, i) => (i % 7 === 3 ? -100 : Math.min(vocab - 1, Math.floor(v))));
}

describe("crossEntropyGradInPlace (csrc/xent.cc) vs the reference", () => {
  it("the cpu backend serves it natively", () => {
    expect(cpuBackendInfo(cpuBackend)?.nativeOps).toContain("crossEntropyGradInPlace");
  });
  for (const level of LEVELS) {
    const skip = !runnable.includes(level);
    for (const [rows, vocab] of [
      [1, 1],
      [13, 301],
      [67, 1000],
    ]) {
      for (const zLoss of [0, 1e-3]) {
        for (const grad of [true, false]) {
          const name = `ISA level ${level}: rows ${rows} vocab ${vocab} zLoss ${zLoss} grad ${grad}`;
          it.skipIf(skip)(skip ? `${name} (skipped: this CPU cannot run ISA level ${level})` : name, () => {
            native.setFusedIsaLevel(level);
            const x = rand(rows * vocab, rows + vocab, -4, 4);
            const lab = labels(rows, vocab, 5);
            const xa = referenceBackend.fromHost(x, "f32");
            const xb = referenceBackend.fromHost(x, "f32");
            const lb = referenceBackend.fromHost(lab, "i32");
            const o = { ignoreIndex: -100, zLoss, grad };
            const want = referenceBackend.crossEntropyGradInPlace!(xa, lb, rows, vocab, o) as HostBuffer;
            const got = fused.crossEntropyGradInPlace!(xb, lb, rows, vocab, o) as HostBuffer;
            const close = (g: ArrayLike<number>, w: ArrayLike<number>, what: string) => {
              for (let i = 0; i < w.length; i++)
                if (!(Math.abs(g[i] - w[i]) <= 1e-6 + 1e-5 * Math.abs(w[i])))
                  throw new Error(`${what}[${i}]: got ${g[i]}, want ${w[i]}`);
            };
            close(got.data, want.data, "loss");
            close((xb as HostBuffer).data, (xa as HostBuffer).data, grad ? "dlogits" : "logits (untouched)");
            if (!grad) expect(Array.from((xb as HostBuffer).data)).toEqual(Array.from(x));
            for (const b of [xa, xb, lb, want, got]) referenceBackend.free(b);
          });
        }
      }
    }
  }

  it("a label outside [0, vocab) is a RangeError naming the row", () => {
    const x = referenceBackend.fromHost(new Float32Array(6), "f32");
    const lb = referenceBackend.fromHost(Int32Array.from([0, 3]), "i32");
    expect(() => fused.crossEntropyGradInPlace!(x, lb, 2, 3, { ignoreIndex: -100, zLoss: 0, grad: true })).toThrow(
      /labels\[1\] = 3 is outside \[0, 3\)/,
    );
  });
});

describe("linearCrossEntropy: cpu backend vs reference (forward, dHidden, dWeight)", () => {
  const cases = [
    { N: 173, H: 67, V: 301, chunkSize: 64, zLoss: 0, weight: "f32" },
    { N: 251, H: 33, V: 127, chunkSize: 100, zLoss: 1e-3, weight: "f32" },
    { N: 97, H: 45, V: 211, chunkSize: 32, zLoss: 0, weight: "bf16" },
    { N: 5, H: 3, V: 7, chunkSize: 2, zLoss: 0, weight: "f32" },
  ] as const;
  for (const c of cases) {
    for (const trainHead of [true, false]) {
      it(`N ${c.N} H ${c.H} V ${c.V} chunk ${c.chunkSize} zLoss ${c.zLoss} ${c.weight} weight${trainHead ? "" : " (frozen)"}`, () => {
        const r = assertOpParity(
          linearCrossEntropyOp,
          cpuBackend,
          [
            { values: rand(c.N * c.H, 1, -1, 1), shape: [c.N, c.H], requiresGrad: true },
            { values: rand(c.V * c.H, 2, -0.5, 0.5), shape: [c.V, c.H], dtype: c.weight, requiresGrad: trainHead },
            { values: labels(c.N, c.V, 3), shape: [c.N], dtype: "i32" },
          ],
          { chunkSize: c.chunkSize, ignoreIndex: -100, zLoss: c.zLoss },
          { tolerance: TOL_ACC },
        );
        expect(r.grads[0]).not.toBeNull();
        expect(r.grads[1] === null).toBe(!trainHead);
      });
    }
  }

  it("bad labels on the cpu backend: the typed error of the native kernel, no crash", () => {
    const h = tensor(rand(6, 1), { shape: [2, 3], backend: cpuBackend });
    const w = tensor(rand(12, 2), { shape: [4, 3], backend: cpuBackend });
    const l = tensor([1, 4], { dtype: "i32", backend: cpuBackend });
    const before = cpuBackend.memoryStats().currentBytes;
    expect(() => linearCrossEntropy(h, w, l)).toThrow(/labels\[1\] = 4 is outside \[0, 4\)/);
    expect(cpuBackend.memoryStats().currentBytes).toBe(before); // nothing left behind by the failed call
    expect(() => linearCrossEntropy(h, w, l.reshape([1, 2]).cast("f32"))).toThrow(TensorError);
    for (const t of [h, w, l]) t.dispose();
  });
});
