// Trajectories of 50 steps against PyTorch (fixture from scripts/make_fixtures.py): AdamW (both torch
// code paths), Lion (lion-pytorch's update) and SGD with momentum, each with two parameter groups.
import { describe, expect, it } from "vitest";
import { AdamW, Lion, type Optimizer, SGD } from "../src/index";
import { BACKENDS, host, loadTrajectories, maxRelError, paramsOn, setGrads, type Trajectories } from "./helpers";

type Make = (t: Trajectories, params: Record<string, import("@qlora/tensor").Tensor>) => Optimizer<never>;

function groups(t: Trajectories, params: Record<string, import("@qlora/tensor").Tensor>, run: string) {
  return t.groups.map((names, i) => {
    const h = t.hyper[run][i];
    const spec: Record<string, unknown> = { params: names.map((n) => [n, params[n]] as const) };
    for (const [k, v] of Object.entries(h)) {
      const key = k === "weight_decay" ? "weightDecay" : k;
      spec[key] = v;
    }
    return spec;
  });
}

const RUNS: [string, string, Make][] = [
  ["adamw", "torch.optim.AdamW(foreach=False)", (t, p) => new AdamW(groups(t, p, "adamw") as never) as never],
  ["adamw_foreach", "torch.optim.AdamW(foreach=True)", (t, p) => new AdamW(groups(t, p, "adamw") as never) as never],
  ["lion", "lion-pytorch", (t, p) => new Lion(groups(t, p, "lion") as never) as never],
  ["sgd", "torch.optim.SGD(momentum, nesterov)", (t, p) => new SGD(groups(t, p, "sgd") as never) as never],
];

describe.each(BACKENDS.map((b) => [b.name, b] as const))("torch trajectories on %s", (_name, backend) => {
  it.each(RUNS)(
    "%s equals %s at every one of 50 steps (1e-6 relative; in fact bit-identical)",
    async (run, _peer, make) => {
      const t = await loadTrajectories();
      const params = paramsOn(t, backend);
      const opt = make(t, params);
      let worst = 0;
      let differing = 0;
      for (let step = 0; step < t.steps; step++) {
        setGrads(t, params, step);
        opt.step();
        for (const [name, p] of Object.entries(params)) {
          const n = p.size;
          const want = t.runs[run][name].subarray(step * n, (step + 1) * n);
          const got = host(p);
          const err = maxRelError(got, want);
          for (let i = 0; i < n; i++) if (!Object.is(got[i], want[i])) differing++;
          worst = Math.max(worst, err);
          if (!(err <= 1e-6)) expect.fail(`${run} step ${step + 1}, parameter ${name}: relative error ${err}`);
        }
      }
      // The lagging per-parameter step of "d" (no gradient at steps 10..14) is tracked per name.
      expect(opt.stateOf("d")?.step).toBe(t.steps - t.noGradSteps.d.length);
      expect(worst).toBeLessThanOrEqual(1e-6);
      // Stronger than asked: the same roundings as torch's AVX2 kernels (fused multiply-adds where torch
      // fuses), so every element of every step is bit-identical to the fixture.
      expect(differing).toBe(0);
      opt.dispose();
    },
  );
});
