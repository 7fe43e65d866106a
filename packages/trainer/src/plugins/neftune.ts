/**
 * NEFTune (Jain et al. 2023; transformers' neftune_noise_alpha): during training, the embedding output [b, L, d] gets
 * uniform noise in ±alpha/sqrt(L·d). The embedding module is found by name (default: the first module with an
 * `embeddingDim`), its forward wrapped at fit:start and restored at fit:end. The noise comes from its own Philox
 * generator seeded by the trainer's seed; its offset is saved in checkpoints, so resumed runs draw the same noise.
 */
import { Generator, type Module, type Tensor, rand } from "@qlora/tensor";
import { TrainerError } from "../errors";
import type { TrainerPlugin } from "../plugin";

export interface NeftuneOptions {
  readonly alpha: number;
  /** Dotted module name of the token embedding (e.g. "model.embed_tokens"). */
  readonly module?: string;
}

export function neftune(o: NeftuneOptions): TrainerPlugin {
  let gen: Generator | undefined;
  let restore: (() => void) | undefined;
  let savedOffset: number | undefined;
  return {
    name: "neftune",
    hooks: {
      "fit:start"(ctx) {
        const t = ctx.trainer as { options: { model: Module }; args: { seed: number } };
        const target = findEmbedding(t.options.model, o.module);
        gen = new Generator(t.args.seed + 0x4e4546, savedOffset ?? 0);
        const m = target as Module & { forward: (...a: unknown[]) => Tensor };
        const original = m.forward;
        m.forward = (...args: unknown[]) => {
          const out = original.apply(m, args);
          return m.training && gen ? addNoise(out, o.alpha, gen) : out;
        };
        restore = () => {
          m.forward = original;
        };
      },
      "fit:end": () => restore?.(),
      error: () => restore?.(),
    },
    stateDict: () => ({ offset: gen?.offset ?? savedOffset ?? 0 }),
    loadStateDict(s) {
      savedOffset = (s as { offset: number }).offset;
      if (gen) gen.offset = savedOffset;
    },
  };
}

function findEmbedding(model: Module, name: string | undefined): Module {
  for (const [n, m] of model.namedModules()) {
    if (name !== undefined ? n === name : typeof (m as { embeddingDim?: unknown }).embeddingDim === "number") return m;
  }
  throw new TrainerError(
    "NEFTUNE",
    name
      ? `neftune: the model has no module "${name}"`
      : "neftune: no embedding module found; pass its name as `module`",
  );
}

function addNoise(x: Tensor, alpha: number, gen: Generator): Tensor {
  const [l, d] = x.shape.slice(-2);
  const mag = alpha / Math.sqrt(l * d);
  const u = rand([...x.shape], { generator: gen, backend: x.backend });
  const noise = u.mul(2 * mag).sub(mag);
  u.dispose();
  const out = x.add(noise);
  noise.dispose();
  x.dispose();
  return out;
}
