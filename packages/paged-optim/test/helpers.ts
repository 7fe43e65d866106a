import { fileURLToPath } from "node:url";
import { cpuBackend, cpuBackendInfo } from "@qlora/cpu-kernels";
import { openSafetensors } from "@qlora/formats";
import { type Backend, referenceBackend, type Tensor, tensor } from "@qlora/tensor";

/** The backends every test body runs on: the TypeScript reference, and the native cpu backend when it loaded. */
export const BACKENDS: Backend[] = [referenceBackend, ...(cpuBackendInfo(cpuBackend)?.native ? [cpuBackend] : [])];
export const CPU_NATIVE = cpuBackendInfo(cpuBackend)?.native === true;

export const FIXTURE = fileURLToPath(new URL("./fixtures/trajectories.safetensors", import.meta.url));

export interface Trajectories {
  readonly steps: number;
  readonly shapes: Record<string, number[]>;
  readonly groups: string[][];
  readonly hyper: Record<string, Record<string, number | boolean | number[]>[]>;
  readonly noGradSteps: Record<string, number[]>;
  readonly init: Record<string, Float32Array>;
  /** [steps, numel] per parameter. */
  readonly grad: Record<string, Float32Array>;
  /** run → parameter → [steps, numel] parameters after each step. */
  readonly runs: Record<string, Record<string, Float32Array>>;
}

let cached: Promise<Trajectories> | undefined;

export function loadTrajectories(): Promise<Trajectories> {
  cached ??= (async () => {
    const st = await openSafetensors(FIXTURE);
    const meta = st.metadata;
    const shapes: Record<string, number[]> = {};
    const init: Record<string, Float32Array> = {};
    const grad: Record<string, Float32Array> = {};
    const runs: Record<string, Record<string, Float32Array>> = {};
    for (const name of st.names) {
      const [kind, param] = name.split(".");
      const data = (await st.readTyped(name, "F32")).slice();
      if (kind === "init") {
        init[param] = data;
        shapes[param] = [...st.info(name).shape];
      } else if (kind === "grad") grad[param] = data;
      else {
        runs[kind] ??= {};
        runs[kind][param] = data;
      }
    }
    await st.close();
    return {
      steps: Number(meta.steps),
      shapes,
      groups: JSON.parse(meta.groups),
      hyper: JSON.parse(meta.hyper),
      noGradSteps: JSON.parse(meta.no_grad_steps),
      init,
      grad,
      runs,
    };
  })();
  return cached;
}

export function paramsOn(t: Trajectories, backend: Backend): Record<string, Tensor> {
  const out: Record<string, Tensor> = {};
  for (const [name, shape] of Object.entries(t.shapes))
    out[name] = tensor(t.init[name], { shape, backend, requiresGrad: true });
  return out;
}

/** Sets each parameter's gradient to the fixture's gradient of step `step` (0-based), or null where torch had none. */
export function setGrads(t: Trajectories, params: Record<string, Tensor>, step: number): void {
  for (const [name, p] of Object.entries(params)) {
    p.grad?.dispose();
    const n = p.size;
    p.grad = t.noGradSteps[name]?.includes(step)
      ? null
      : tensor(t.grad[name].subarray(step * n, (step + 1) * n), { shape: p.shape, backend: p.backend });
  }
}

export function host(p: Tensor): Float32Array {
  return p.toTypedArray() as Float32Array;
}

/** Largest |a − b| / |b| over elements (b = 0 counts |a − b|). */
export function maxRelError(a: Float32Array, b: Float32Array): number {
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    const r = b[i] === 0 ? d : d / Math.abs(b[i]);
    if (!(r <= worst)) worst = r;
  }
  return worst;
}

/** A deterministic generator of f32 arrays (mulberry32 + Box-Muller) for tests that need no fixture. */
export function normals(n: number, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0;
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = Math.max(next(), 1e-12);
    out[i] = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * next()) * scale;
  }
  return out;
}
