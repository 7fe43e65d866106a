// Exact resume: an optimizer saved at step 10 and loaded into a fresh optimizer over fresh parameter
// tensors (a reloaded model: same names, new objects) gives bit-identical parameters at step 20.
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Backend, type Tensor, tensor } from "@qlora/tensor";
import { afterAll, describe, expect, it } from "vitest";
import { AdamW, Lion, type Optimizer, SGD } from "../src/index";
import { BACKENDS, host, normals } from "./helpers";

const SHAPES: Record<string, number[]> = {
  "layers.0.q_proj.lora_A.default.weight": [8, 640],
  "layers.0.q_proj.lora_B.default.weight": [640, 8],
  "layers.0.norm.weight": [65],
};

function model(be: Backend, values?: Record<string, Float32Array>): Record<string, Tensor> {
  const out: Record<string, Tensor> = {};
  Object.entries(SHAPES).forEach(([name, shape], i) => {
    const n = shape.reduce((a, b) => a * b, 1);
    out[name] = tensor(values?.[name] ?? normals(n, 40 + i, 0.1), { shape, backend: be, requiresGrad: true });
  });
  return out;
}

function train(params: Record<string, Tensor>, opt: Optimizer<never>, from: number, to: number): void {
  for (let step = from; step <= to; step++) {
    Object.values(params).forEach((p, i) => {
      p.grad?.dispose();
      p.grad = tensor(normals(p.size, 7000 + 10 * step + i, 0.01), { shape: p.shape, backend: p.backend });
    });
    opt.step();
  }
}

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

type Make = (p: Record<string, Tensor>) => Optimizer<never>;
const CASES: [string, Make][] = [
  ["AdamW 32-bit, two groups", (p) => new AdamW(groupsOf(p), { weightDecay: 0.05 }) as never],
  ["PagedAdamW8bit", (p) => new AdamW(groupsOf(p), { bits: 8, paged: true, minEightBitSize: 4096 }) as never],
  ["Lion 8-bit", (p) => new Lion(Object.entries(p), { bits: 8 }) as never],
  ["SGD momentum", (p) => new SGD(Object.entries(p), { lr: 0.01, momentum: 0.9, weightDecay: 1e-3 }) as never],
];

function groupsOf(p: Record<string, Tensor>) {
  const entries = Object.entries(p);
  return [
    { params: entries.filter(([n]) => !n.includes("lora_B")) },
    { params: entries.filter(([n]) => n.includes("lora_B")), lr: 4e-3, weightDecay: 0 },
  ];
}

describe.each(BACKENDS.map((b) => [b.name, b] as const))("resume on %s", (_name, be) => {
  it.each(CASES)("%s: saved at step 10, reloaded, bit-identical at step 20", async (_c, make) => {
    const dir = await mkdtemp(join(tmpdir(), "qlora-optim-"));
    dirs.push(dir);
    // uninterrupted
    const a = model(be);
    const oa = make(a);
    train(a, oa, 1, 20);
    // interrupted at 10
    const b = model(be);
    const ob = make(b);
    train(b, ob, 1, 10);
    await ob.save(dir);
    const snapshot = Object.fromEntries(Object.entries(b).map(([n, t]) => [n, host(t).slice()]));
    ob.dispose();
    expect((await readdir(dir)).sort()).toEqual(["optimizer.json", "optimizer.safetensors"]); // no temp files left
    const c = model(be, snapshot);
    const oc = make(c);
    await oc.load(dir);
    expect(oc.stateOf("layers.0.norm.weight")?.step).toBe(10);
    train(c, oc, 11, 20);
    for (const name of Object.keys(SHAPES)) expect(host(c[name])).toEqual(host(a[name]));
    oa.dispose();
    oc.dispose();
  });
});
