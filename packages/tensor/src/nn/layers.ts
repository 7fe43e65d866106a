import type { Backend, DType } from "../backend/types";
import { dropout, embedding, matmul, rmsNorm } from "../ops";
import { getGenerator } from "../random";
import type { Generator } from "../random";
import { ones, randn, rand, type Tensor } from "../tensor";
import { TensorError } from "../errors";
import { Module } from "./module";

export interface LayerOptions {
  readonly backend?: Backend | string;
  readonly device?: string;
  readonly dtype?: DType;
  readonly generator?: Generator;
}

function checkShape(what: string, t: Tensor, shape: number[]): void {
  if (t.shape.join() !== shape.join())
    throw new TensorError("BAD_SHAPE", `${what} ${JSON.stringify(t.shape)} must be ${JSON.stringify(shape)}`);
}

function uniformInit(shape: number[], bound: number, o: LayerOptions): Tensor {
  const u = rand(shape, { backend: o.backend, device: o.device, generator: o.generator ?? getGenerator() });
  const scaled = u.mul(2 * bound);
  const shifted = scaled.sub(bound);
  u.dispose();
  scaled.dispose();
  if (o.dtype && o.dtype !== "f32") {
    const c = shifted.cast(o.dtype);
    shifted.dispose();
    return c;
  }
  return shifted;
}

/** y = x · Wᵀ + b, W [out, in]; init U(±1/√in) as torch.nn.Linear. */
export class Linear extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor | null;
  constructor(
    readonly inFeatures: number,
    readonly outFeatures: number,
    options: LayerOptions & { bias?: boolean; init?: { weight: Tensor; bias?: Tensor | null } } = {},
  ) {
    super();
    const bound = 1 / Math.sqrt(inFeatures);
    // `init` adopts given tensors (a checkpoint loader) instead of drawing random ones.
    const init = options.init;
    if (init) checkShape("Linear weight", init.weight, [outFeatures, inFeatures]);
    if (init?.bias) checkShape("Linear bias", init.bias, [outFeatures]);
    this.weight = this.registerParameter(
      "weight",
      init?.weight ?? uniformInit([outFeatures, inFeatures], bound, options),
    )!;
    const bias = init
      ? (init.bias ?? null)
      : options.bias === false
        ? null
        : uniformInit([outFeatures], bound, options);
    this.bias = bias ? this.registerParameter("bias", bias) : null;
  }
  forward(x: Tensor): Tensor {
    const wt = this.weight.transpose(0, 1);
    const y = matmul(x, wt);
    wt.dispose();
    if (!this.bias) return y;
    const out = y.add(this.bias);
    y.dispose();
    return out;
  }
}

/** Token embedding: weight [num, dim] ~ N(0, 1) as torch.nn.Embedding. */
export class Embedding extends Module {
  readonly weight: Tensor;
  constructor(
    readonly numEmbeddings: number,
    readonly embeddingDim: number,
    options: LayerOptions & { init?: Tensor } = {},
  ) {
    super();
    if (options.init) {
      checkShape("Embedding weight", options.init, [numEmbeddings, embeddingDim]);
      this.weight = this.registerParameter("weight", options.init)!;
      return;
    }
    let w = randn([numEmbeddings, embeddingDim], {
      backend: options.backend,
      device: options.device,
      generator: options.generator,
    });
    if (options.dtype && options.dtype !== "f32") {
      const c = w.cast(options.dtype);
      w.dispose();
      w = c;
    }
    this.weight = this.registerParameter("weight", w)!;
  }
  forward(ids: Tensor): Tensor {
    return embedding(this.weight, ids);
  }
}

/** RMSNorm over the last dim, weight initialised to ones. */
export class RMSNorm extends Module {
  readonly weight: Tensor;
  constructor(
    readonly dim: number,
    readonly eps = 1e-6,
    options: LayerOptions & { init?: Tensor } = {},
  ) {
    super();
    if (options.init) checkShape("RMSNorm weight", options.init, [dim]);
    this.weight = this.registerParameter(
      "weight",
      options.init ?? ones([dim], { backend: options.backend, device: options.device, dtype: options.dtype }),
    )!;
  }
  forward(x: Tensor): Tensor {
    return rmsNorm(x, this.weight, this.eps);
  }
}

/** Inverted dropout driven by the Philox generator; identity in eval mode. */
export class Dropout extends Module {
  constructor(readonly p = 0.5) {
    super();
  }
  forward(x: Tensor): Tensor {
    return dropout(x, this.p, this.training);
  }
}
