import { describe, expect, it } from "vitest";
import { createReferenceBackend } from "../backend/reference";
import { Generator } from "../random";
import { type Backend, BackendOpError, type MatmulOptions } from "../backend/types";
import { TensorError } from "../errors";
import { memoryStats } from "../memory";
import { crossEntropy, matmul } from "../ops";
import { randn, type Tensor, tensor, tidy } from "../tensor";
import { f64Tensor, gradCheck, gradCheckBackend, randomValues } from "../testing/gradcheck";
import { linearCrossEntropy } from "./linear-cross-entropy";

const be = createReferenceBackend({ name: "reference-lce" });

function labelsFor(n: number, vocab: number, seed: number, backend: Backend = be, ignoreEvery = 5): Tensor {
  const u = randomValues(n, seed, 0, vocab);
  return tensor(
    Array.from(u, (v, i) => (i % ignoreEvery === 2 ? -100 : Math.floor(v))),
    { dtype: "i32", backend },
  );
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** Unchunked oracle: full logits, crossEntropy sum (+ z-loss composed from ops), backward. */
function unchunked(h: Tensor, w: Tensor, labels: Tensor, zLoss: number) {
  const hr = h.detach();
  const wr = w.detach();
  hr.requiresGrad = true;
  wr.requiresGrad = true;
  const loss = tidy(() => {
    const logits = matmul(hr, wr.T);
    let l = crossEntropy(logits, labels, { reduction: "sum" });
    if (zLoss > 0) {
      const lse = logits.exp().sum(-1).log();
      const keepMask = labels.eq(-100).cast("f32").neg().add(1);
      l = l.add(lse.square().mul(keepMask).sum().mul(zLoss));
    }
    return l;
  });
  loss.backward();
  const out = { loss: loss.item(), dh: hr.grad!.toTypedArray(), dw: wr.grad!.toTypedArray() };
  for (const t of [loss, hr.grad!, wr.grad!, hr, wr]) t.dispose();
  return out;
}

describe("linearCrossEntropy equals the unchunked loss and gradients", () => {
  const N = 37;
  const H = 19;
  const V = 53;
  for (const zLoss of [0, 1e-2]) {
    for (const chunkSize of [1, 8, 37, 100]) {
      it(`N=${N} H=${H} V=${V} chunk ${chunkSize} zLoss ${zLoss}`, () => {
        const h = randn([N, H], { backend: be, generator: new Generator(1) });
        const w = randn([V, H], { backend: be, generator: new Generator(2) });
        const labels = labelsFor(N, V, 3);
        const ref = unchunked(h, w, labels, zLoss);
        h.requiresGrad = true;
        w.requiresGrad = true;
        const { loss, tokens } = linearCrossEntropy(h, w, labels, { chunkSize, zLoss });
        expect(tokens.item()).toBe(N - Math.ceil((N - 2) / 5));
        expect(Math.abs(loss.item() - ref.loss)).toBeLessThanOrEqual(1e-5 * Math.abs(ref.loss));
        loss.backward();
        expect(maxAbsDiff(h.grad!.toTypedArray(), ref.dh)).toBeLessThan(2e-5);
        expect(maxAbsDiff(w.grad!.toTypedArray(), ref.dw)).toBeLessThan(2e-5);
        for (const t of [loss, tokens, h.grad!, w.grad!, h, w, labels]) t.dispose();
      });
    }
  }

  it("a 3-D hidden [batch, seq, H] with labels [batch, seq]; the mean is loss / tokens", () => {
    const h = randn([2, 5, 7], { backend: be, generator: new Generator(4), requiresGrad: true });
    const w = randn([11, 7], { backend: be, generator: new Generator(5) });
    const labels = tensor(
      [
        [1, 2, -100, 4, 5],
        [-100, -100, 0, 10, 3],
      ],
      { dtype: "i32", backend: be },
    );
    const { loss, tokens } = linearCrossEntropy(h, w, labels, { chunkSize: 3 });
    const mean = loss.div(tokens);
    const ref = tidy(() => crossEntropy(matmul(h.detach(), w.T), labels));
    expect(Math.abs(mean.item() - ref.item())).toBeLessThan(1e-6);
    mean.backward();
    expect(h.grad!.shape).toEqual([2, 5, 7]);
    for (const t of [loss, tokens, mean, ref, h.grad!, h, w, labels]) t.dispose();
  });

  it("all rows ignored: loss 0, tokens 0, zero gradients", () => {
    const h = randn([4, 3], { backend: be, generator: new Generator(6), requiresGrad: true });
    const w = randn([5, 3], { backend: be, generator: new Generator(7), requiresGrad: true });
    const labels = tensor([-100, -100, -100, -100], { dtype: "i32", backend: be });
    const { loss, tokens } = linearCrossEntropy(h, w, labels, { chunkSize: 3 });
    expect(loss.item()).toBe(0);
    expect(tokens.item()).toBe(0);
    loss.backward();
    expect(Array.from(h.grad!.toTypedArray()).every((v) => v === 0)).toBe(true);
    expect(Array.from(w.grad!.toTypedArray()).every((v) => v === 0)).toBe(true);
    for (const t of [loss, tokens, h.grad!, w.grad!, h, w, labels]) t.dispose();
  });
});

describe("linearCrossEntropy gradients against central finite differences (f64)", () => {
  for (const zLoss of [0, 0.05]) {
    it(`dHidden and dWeight, zLoss ${zLoss}, chunk 2 of 5 rows`, () => {
      const labels = tensor([3, -100, 0, 6, 2], { dtype: "i32", backend: gradCheckBackend });
      const err = gradCheck(
        (h, w) => linearCrossEntropy(h, w, labels, { chunkSize: 2, zLoss }).loss,
        [
          { values: randomValues(5 * 4, 11), shape: [5, 4] },
          { values: randomValues(7 * 4, 12), shape: [7, 4] },
        ],
      );
      expect(err).toBeLessThan(1e-7);
      labels.dispose();
    });
  }

  it("a frozen head gets no gradient; the hidden gradient still checks", () => {
    const labels = tensor([1, 0, 4], { dtype: "i32", backend: gradCheckBackend });
    const w = f64Tensor(randomValues(5 * 3, 13), [5, 3]);
    const err = gradCheck(
      (h) => linearCrossEntropy(h, w, labels, { chunkSize: 2 }).loss,
      [{ values: randomValues(9, 14), shape: [3, 3] }],
    );
    expect(err).toBeLessThan(1e-7);
    expect(w.grad).toBeNull();
    labels.dispose();
    w.dispose();
  });
});

/** A reference backend that counts matmul calls (how many GEMMs the op ran). */
function countingBackend(): { backend: Backend; matmuls: () => number } {
  const base = createReferenceBackend({ name: "counting" });
  let n = 0;
  const backend: Backend = {
    ...base,
    matmul(a, b, o: MatmulOptions, out?) {
      n++;
      return base.matmul(a, b, o, out);
    },
  };
  return { backend, matmuls: () => n };
}

describe("linearCrossEntropy work and memory", () => {
  it("a frozen head skips the dWeight GEMM (2 GEMMs per chunk instead of 3)", () => {
    for (const trainHead of [true, false]) {
      const { backend, matmuls } = countingBackend();
      const h = randn([10, 4], { backend, generator: new Generator(1), requiresGrad: true });
      const w = randn([6, 4], { backend, generator: new Generator(2), requiresGrad: trainHead });
      const labels = labelsFor(10, 6, 3, backend);
      const { loss, tokens } = linearCrossEntropy(h, w, labels, { chunkSize: 4 });
      loss.backward();
      expect(matmuls()).toBe(3 * (trainHead ? 3 : 2));
      expect(w.grad === null).toBe(!trainHead);
      for (const t of [loss, tokens, h.grad!, w.grad, h, w, labels]) t?.dispose();
    }
  });

  function peakOfStep(N: number, V: number, H: number, chunkSize: number): number {
    const h = randn([N, H], { backend: be, generator: new Generator(1), requiresGrad: true });
    const w = randn([V, H], { backend: be, generator: new Generator(2), requiresGrad: true });
    const labels = labelsFor(N, V, 3);
    // the backend's own counters: they see every buffer, the op's raw per-chunk temporaries included
    const before = be.memoryStats().currentBytes;
    be.resetPeak();
    const { loss, tokens } = linearCrossEntropy(h, w, labels, { chunkSize });
    loss.backward();
    const peak = be.memoryStats().peakBytes - before;
    for (const t of [loss, tokens, h.grad!, w.grad!, h, w, labels]) t.dispose();
    return peak;
  }

  it("peak memory of loss + backward grows with the chunk, not with tokens × vocab", () => {
    const V = 512;
    const H = 8;
    const chunk = 16;
    const small = peakOfStep(64, V, H, chunk);
    const large = peakOfStep(512, V, H, chunk);
    const biggerChunk = peakOfStep(512, V, H, 4 * chunk);
    const logitsBytes = (n: number) => n * V * 4;
    // 8× the tokens: the full logits would add 7·64·512·4 B ≈ 0.9 MB; only N×H-sized buffers grow
    expect(large - small).toBeLessThan(logitsBytes(64));
    expect(large).toBeLessThan(logitsBytes(512) / 4);
    // 4× the chunk: grows by about 3 more chunks of logits (and their per-chunk temporaries)
    expect(biggerChunk - large).toBeGreaterThan(logitsBytes(3 * chunk));
    expect(biggerChunk - large).toBeLessThan(3 * logitsBytes(3 * chunk));
  });

  it("backward allocates no second dHidden/dWeight: the saved gradients are scaled in place", () => {
    const h = randn([40, 16], { backend: be, generator: new Generator(1), requiresGrad: true });
    const w = randn([300, 16], { backend: be, generator: new Generator(2), requiresGrad: true });
    const labels = labelsFor(40, 300, 3);
    const { loss, tokens } = linearCrossEntropy(h, w, labels, { chunkSize: 8 });
    const mean = loss.div(tokens); // the incoming gradient is 1/tokens, not 1
    const before = be.memoryStats().currentBytes;
    be.resetPeak();
    mean.backward();
    // a few scalars at most; a fresh dWeight would be 300·16·4 = 19200 bytes, dHidden 2560
    expect(be.memoryStats().peakBytes - before).toBeLessThan(256);
    const ref = unchunked(h, w, labels, 0);
    const n = tokens.item();
    expect(
      maxAbsDiff(
        w.grad!.toTypedArray(),
        Array.from(ref.dw, (v) => v / n),
      ),
    ).toBeLessThan(1e-6);
    expect(
      maxAbsDiff(
        h.grad!.toTypedArray(),
        Array.from(ref.dh, (v) => v / n),
      ),
    ).toBeLessThan(1e-6);
    for (const t of [loss, tokens, mean, h.grad!, w.grad!, h, w, labels]) t.dispose();
  });

  it("no leaked buffers over 100 steps (memory stats flat)", () => {
    const h = randn([9, 5], { backend: be, generator: new Generator(1), requiresGrad: true });
    const w = randn([13, 5], { backend: be, generator: new Generator(2), requiresGrad: true });
    const labels = labelsFor(9, 13, 3);
    let at10 = 0;
    let rawAt10 = 0;
    for (let step = 1; step <= 100; step++) {
      const { loss, tokens } = linearCrossEntropy(h, w, labels, { chunkSize: 4, zLoss: 1e-3 });
      loss.backward();
      for (const t of [loss, tokens, h.grad!, w.grad!]) t.dispose();
      h.grad = null;
      w.grad = null;
      if (step === 10) at10 = memoryStats("cpu").currentBytes;
      if (step === 10) rawAt10 = be.memoryStats().currentBytes;
    }
    expect(memoryStats("cpu").currentBytes).toBe(at10);
    expect(be.memoryStats().currentBytes).toBe(rawAt10);
    for (const t of [h, w, labels]) t.dispose();
  });
});

describe("linearCrossEntropy fails cleanly", () => {
  it("a bad label in a later chunk throws the typed error and leaves no buffer behind", () => {
    const h = randn([9, 4], { backend: be, generator: new Generator(1), requiresGrad: true });
    const w = randn([6, 4], { backend: be, generator: new Generator(2), requiresGrad: true });
    const labels = tensor([0, 1, 2, 3, 4, 5, 0, 7, 1], { dtype: "i32", backend: be });
    const before = be.memoryStats().currentBytes;
    expect(() => linearCrossEntropy(h, w, labels, { chunkSize: 3 })).toThrow(/label 7 at row 1 is outside \[0, 6\)/);
    expect(be.memoryStats().currentBytes).toBe(before);
    for (const t of [h, w, labels]) t.dispose();
  });
});

describe("linearCrossEntropy on a device backend without the fused chunk op (the cuda backend today)", () => {
  // a reference backend posing as a device: no crossEntropyGradInPlace, so the op composes crossEntropy +
  // crossEntropyBackward (+ copyInPlace) per chunk; z-loss has no composed form and is refused
  const base = createReferenceBackend({ name: "fake-device" });
  const device: Backend = { ...base, name: "fake-device", device: "fake:0", crossEntropyGradInPlace: undefined };
  it("zLoss 0: same loss and gradients as the fused path", () => {
    const mk = (backend: Backend) => {
      const h = randn([11, 6], { backend, generator: new Generator(1), requiresGrad: true });
      const w = randn([9, 6], { backend, generator: new Generator(2), requiresGrad: true });
      const labels = labelsFor(11, 9, 3, backend);
      const { loss, tokens } = linearCrossEntropy(h, w, labels, { chunkSize: 4 });
      loss.backward();
      const r = { loss: loss.item(), dh: h.grad!.toTypedArray(), dw: w.grad!.toTypedArray() };
      for (const t of [loss, tokens, h.grad!, w.grad!, h, w, labels]) t.dispose();
      return r;
    };
    const got = mk(device);
    const want = mk(be);
    expect(Math.abs(got.loss - want.loss)).toBeLessThan(1e-5);
    expect(maxAbsDiff(got.dh, want.dh)).toBeLessThan(1e-6);
    expect(maxAbsDiff(got.dw, want.dw)).toBeLessThan(1e-6);
  });
  it("zLoss > 0: BackendOpError naming the missing op", () => {
    const h = randn([3, 2], { backend: device, generator: new Generator(1) });
    const w = randn([4, 2], { backend: device, generator: new Generator(2) });
    const labels = tensor([0, 1, 2], { dtype: "i32", backend: device });
    expect(() => linearCrossEntropy(h, w, labels, { zLoss: 1e-4 })).toThrow(BackendOpError);
    expect(() => linearCrossEntropy(h, w, labels, { zLoss: 1e-4 })).toThrow(/crossEntropyGradInPlace/);
    for (const t of [h, w, labels]) t.dispose();
  });
});

describe("linearCrossEntropy rejects bad input with a TensorError naming the argument", () => {
  const h = randn([4, 3], { backend: be, generator: new Generator(1) });
  const w = randn([5, 3], { backend: be, generator: new Generator(2) });
  const labels = tensor([0, 1, 2, 3], { dtype: "i32", backend: be });
  const cases: [string, () => unknown, RegExp][] = [
    ["weight not 2-D", () => linearCrossEntropy(h, w.reshape([15]), labels), /weight must be \[vocab, hidden\]/],
    ["hidden size mismatch", () => linearCrossEntropy(randn([4, 2], { backend: be }), w, labels), /must end in/],
    ["labels not i32", () => linearCrossEntropy(h, w, labels.cast("f32")), /labels must be i32/],
    [
      "labels count",
      () => linearCrossEntropy(h, w, tensor([0, 1], { dtype: "i32", backend: be })),
      /one entry per row/,
    ],
    ["chunkSize 0", () => linearCrossEntropy(h, w, labels, { chunkSize: 0 }), /chunkSize must be a positive integer/],
    ["zLoss < 0", () => linearCrossEntropy(h, w, labels, { zLoss: -1 }), /zLoss must be a finite number >= 0/],
    [
      "label out of range",
      () => linearCrossEntropy(h, w, tensor([0, 1, 9, 3], { dtype: "i32", backend: be })),
      /label 9 at row 2 is outside \[0, 5\)/,
    ],
  ];
  for (const [name, fn, message] of cases)
    it(name, () => {
      expect(fn).toThrow(TensorError);
      expect(fn).toThrow(message);
    });
});
