// The runtime engine's additions on the native cpu backend (issue 10): matmul with accumulation
// (C = alpha·op(A)·op(B) + beta·C) against the reference backend on odd shapes, outputs taken from the
// caching allocator without zeroing, swiglu (declared with defineOp) through the op-parity helper, and
// flat memory over 100 steps.
import {
  type Backend,
  type HostBuffer,
  matmulAccumulate,
  memoryStats,
  noGrad,
  randn,
  referenceBackend,
  sharedHostAllocator,
  swigluOp,
  tidy,
} from "@qlora/tensor";
import { assertOpParity, randomValues } from "@qlora/tensor/testing";
import { describe, expect, test } from "vitest";
import { cpuBackend, cpuBackendInfo } from "../src/backend";

const native = cpuBackendInfo(cpuBackend)?.native === true;
const needsNative = native ? "" : " [skipped: the native addon did not load]";
const vals = (n: number, seed: number) => Float32Array.from(randomValues(n, seed));

function hostF32(be: Backend, data: Float32Array): HostBuffer {
  return be.fromHost(data, "f32") as HostBuffer;
}

function worst(a: ArrayLike<number>, r: ArrayLike<number>): number {
  let w = 0;
  for (let i = 0; i < r.length; i++) w = Math.max(w, Math.abs(a[i] - r[i]) / (1e-5 + 1e-4 * Math.abs(r[i])));
  return w;
}

describe.skipIf(!native)(`cpu matmul with accumulation vs the reference backend${needsNative}`, () => {
  const shapes: [number, number, number, number][] = [
    [1, 1, 1, 1],
    [1, 7, 13, 5],
    [2, 33, 16, 257],
    [1, 130, 64, 301],
    [1, 67, 300, 129], // k > KC: the GEMM's later k panels accumulate too
    [1, 301, 16, 290], // a short k panel (gemm_driver.cc kShortPanel) over several MC blocks, row and column edges
    [3, 45, 0, 17],
  ];
  for (const [batch, m, k, n] of shapes)
    for (const [alpha, beta] of [
      [1, 0],
      [1, 1],
      [0.5, -2],
      [2, 0],
    ])
      for (const [transA, transB] of [
        [false, false],
        [true, true],
      ])
        test(`batch ${batch} ${m}x${k}x${n}, alpha ${alpha}, beta ${beta}, trans ${transA}/${transB}`, () => {
          const a = vals(batch * m * k, m + k);
          const b = vals(batch * k * n, n + 1);
          const c = vals(batch * m * n, 3);
          const o = { batch, m, k, n, transA, transB, alpha, beta };
          const ref = referenceBackend.matmul(
            hostF32(referenceBackend, a),
            hostF32(referenceBackend, b),
            o,
            hostF32(referenceBackend, c),
          ) as HostBuffer;
          const cOut = hostF32(cpuBackend, c);
          const got = cpuBackend.matmul(hostF32(cpuBackend, a), hostF32(cpuBackend, b), o, cOut) as HostBuffer;
          expect(got).toBe(cOut); // written in place
          expect(worst(got.data, ref.data)).toBeLessThanOrEqual(1);
          // without an output buffer: fresh (recycled) output scaled by alpha
          const fresh = cpuBackend.matmul(hostF32(cpuBackend, a), hostF32(cpuBackend, b), o) as HostBuffer;
          const refFresh = referenceBackend.matmul(
            hostF32(referenceBackend, a),
            hostF32(referenceBackend, b),
            o,
          ) as HostBuffer;
          expect(worst(fresh.data, refFresh.data)).toBeLessThanOrEqual(1);
        });
  test("bf16 operands accumulate too (scratch path: no f32 operand to scale)", () => {
    const [m, k, n] = [33, 40, 57];
    const bf = (x: Float32Array) => {
      const t = referenceBackend.fromHost(x, "f32");
      return referenceBackend.copy(t, { shape: [x.length], strides: [1], offset: 0 }, "bf16");
    };
    const a = bf(vals(m * k, 5));
    const b = bf(vals(k * n, 6));
    const c = vals(m * n, 7);
    const o = { batch: 1, m, k, n, alpha: 0.5, beta: 1 };
    const ref = referenceBackend.matmul(a, b, o, hostF32(referenceBackend, c)) as HostBuffer;
    const got = cpuBackend.matmul(a, b, o, hostF32(cpuBackend, c)) as HostBuffer;
    expect(worst(got.data, ref.data)).toBeLessThanOrEqual(1);
  });
  test("beta = 0 never reads C, and a recycled NaN-filled output is fully overwritten", () => {
    const dirty = cpuBackend.allocUninit!("f32", 64 * 64) as HostBuffer;
    (dirty.data as Float32Array).fill(Number.NaN);
    cpuBackend.free(dirty);
    const y = cpuBackend.matmul(hostF32(cpuBackend, vals(64 * 32, 1)), hostF32(cpuBackend, vals(32 * 64, 2)), {
      batch: 1,
      m: 64,
      k: 32,
      n: 64,
    }) as HostBuffer;
    expect(Array.from(y.data).every(Number.isFinite)).toBe(true);
    const c = hostF32(cpuBackend, new Float32Array(4).fill(Number.NaN));
    cpuBackend.matmul(
      hostF32(cpuBackend, Float32Array.of(1, 2, 3, 4)),
      hostF32(cpuBackend, Float32Array.of(1, 0, 0, 1)),
      { batch: 1, m: 2, k: 2, n: 2, beta: 0 },
      c,
    );
    expect(Array.from((c as HostBuffer).data)).toEqual([1, 2, 3, 4]);
  });
  test("matmulAccumulate on cpu tensors (LoRA-shaped: y += s·(x·Aᵀ)·Bᵀ, rank 16)", () => {
    const x = randn([37, 96], { backend: cpuBackend });
    const A = randn([16, 96], { backend: cpuBackend });
    const B = randn([80, 16], { backend: cpuBackend });
    const y = randn([37, 80], { backend: cpuBackend });
    const want = tidy(() => y.add(x.matmul(A.T).matmul(B.T).mul(0.25)).toArray());
    tidy(() => matmulAccumulate(y, x.matmul(A.T), B.T, 0.25, 1));
    expect(worst(y.toArray(), want)).toBeLessThanOrEqual(1);
  });
});

describe.skipIf(!native)(`rmsNormBackward with a frozen weight${needsNative}`, () => {
  test("weightGrad false: the same dx, no dweight computed (null), on odd shapes", () => {
    for (const [rows, dim] of [
      [1, 1],
      [7, 33],
      [129, 301],
    ]) {
      const dy = hostF32(cpuBackend, vals(rows * dim, 1));
      const x = hostF32(cpuBackend, vals(rows * dim, 2));
      const w = hostF32(cpuBackend, vals(dim, 3));
      const { rstd } = cpuBackend.rmsNorm(x, w, rows, dim, 1e-6);
      const full = cpuBackend.rmsNormBackward(dy, x, w, rstd, rows, dim);
      const dxOnly = cpuBackend.rmsNormBackward(dy, x, w, rstd, rows, dim, { weightGrad: false });
      expect(dxOnly.dweight).toBeNull();
      expect(Array.from((dxOnly.dx as HostBuffer).data)).toEqual(Array.from((full.dx as HostBuffer).data));
      const ref = referenceBackend.rmsNormBackward(dy, x, w, rstd, rows, dim);
      expect(worst((full.dweight as HostBuffer).data, (ref.dweight as HostBuffer).data)).toBeLessThanOrEqual(1);
    }
  });
});

describe.skipIf(!native)(`defineOp ops on the cpu backend${needsNative}`, () => {
  test("swiglu (tensor.swiglu) matches its reference, forward and backward, on odd shapes", () => {
    for (const shape of [[1], [7, 13], [3, 257], [301], [129, 65]]) {
      const n = shape.reduce((p, q) => p * q, 1);
      assertOpParity(
        swigluOp,
        cpuBackend,
        [
          { values: Array.from(vals(n, 3), (v) => 4 * v), shape, requiresGrad: true },
          { values: vals(n, 4), shape, requiresGrad: true },
        ],
        undefined,
      );
    }
  });
  test("no leaked buffers over 100 steps on the cpu backend; no fresh host allocation after warm-up", () => {
    const w = randn([96, 64], { backend: cpuBackend, requiresGrad: true });
    const step = () => {
      const l = tidy(() => {
        const x = randn([33, 96], { backend: cpuBackend });
        const h = x.matmul(w);
        return swigluOp([h, h.tanh()], undefined).square().mean();
      });
      l.backward();
      l.dispose();
      tidy(() => noGrad(() => w.add_(w.grad!, -1e-3)));
    };
    step();
    step();
    const before = { live: memoryStats("cpu").currentBytes, fresh: sharedHostAllocator.stats().fresh };
    for (let i = 2; i < 100; i++) step();
    expect(memoryStats("cpu").currentBytes).toBe(before.live);
    expect(sharedHostAllocator.stats().fresh).toBe(before.fresh);
    w.grad?.dispose();
    w.dispose();
  });
});
