/**
 * The two modules FsdpStrategy puts into the model:
 *  - ShardedLinear4bit replaces each frozen Linear4bit. It holds no 4-bit state of its own: its unit lends it a
 *    whole Linear4bit (rebuilt from the all-gathered shards) while the unit is gathered, and its forward, its
 *    quantizedWeight (what LoRA's fused op reads) and its quantState use that one. Outside a gather they throw.
 *  - FsdpUnit replaces a decoder layer (`…layers.{i}`): the same children under the same names (so parameter
 *    names and state dicts do not change), and a forward that gathers the unit's shards, runs the layer, and frees
 *    them again (see FsdpStrategy for when they are freed in backward).
 * It subclasses Linear4bit (not wraps it) because LoRA recognises a quantized base by `instanceof Linear4bit`;
 * the parent is built from a 1×64 placeholder state, and the getters the parent exposes are overridden.
 */
import { quantize4bit } from "@qlora/nf4";
import {
  Linear4bit,
  Module,
  type QuantizedWeight,
  Tensor,
  add,
  checkpoint,
  isGradEnabled,
  noGrad,
} from "@qlora/tensor";
import type { QuantState4bit } from "@qlora/nf4";
import { DistributedError } from "./errors";

/** The gather/free policy a unit calls back into (FsdpStrategy). */
export interface UnitOwner {
  /** True while the strategy runs loss.backward() (CausalLM's own checkpoints recompute there). */
  readonly inBackward: boolean;
  gather(unit: FsdpUnit): void;
  release(unit: FsdpUnit): void;
}

const placeholderState = (): QuantState4bit =>
  quantize4bit(new Float32Array(64), { blocksize: 64, shape: [1, 64], dtype: "float32" });

export class ShardedLinear4bit extends Linear4bit {
  private lent: Linear4bit | null = null;
  /** Where the whole weight is rebuilt when the unit is gathered. */
  readonly weightBackend: QuantizedWeight["backend"];

  constructor(
    /** Dotted path of the module in the model (for error messages). */
    readonly path: string,
    original: Linear4bit,
  ) {
    super(placeholderState(), { backend: original.quantizedWeight.backend });
    this.weightBackend = original.quantizedWeight.backend;
    // The placeholder's shape is not the layer's: restore the real feature counts (read-only fields of the parent).
    Object.defineProperty(this, "inFeatures", { value: original.inFeatures });
    Object.defineProperty(this, "outFeatures", { value: original.outFeatures });
    if (original.bias) {
      const bias = noGrad(() => (original.bias as Tensor).clone());
      Object.defineProperty(this, "bias", { value: this.registerParameter("bias", bias, false) });
    }
  }

  /** Called by the unit: `full` is this layer's whole 4-bit weight until `take()`. */
  lend(full: Linear4bit): void {
    this.lent = full;
  }
  take(): Linear4bit | null {
    const l = this.lent;
    this.lent = null;
    return l;
  }
  get gathered(): boolean {
    return this.lent !== null;
  }

  private whole(what: string): Linear4bit {
    if (!this.lent)
      throw new DistributedError(
        "NOT_GATHERED",
        `${this.path}: ${what} needs the whole 4-bit weight, but this rank holds only its FSDP shard (the layer's unit is not gathered)`,
      );
    return this.lent;
  }
  override get quantizedWeight(): QuantizedWeight {
    return this.whole("quantizedWeight").quantizedWeight;
  }
  override get quantState(): QuantState4bit {
    return this.whole("quantState").quantState;
  }
  override forward(x: Tensor): Tensor {
    const y = this.whole("forward").forward(x);
    if (!this.bias) return y;
    const out = add(y, this.bias);
    y.dispose();
    return out;
  }
  override dequantizedWeight(): Tensor {
    return this.whole("dequantizedWeight").dequantizedWeight();
  }
  /** The frozen base is not part of the sharded model's state dict: it comes from the model files on every rank. */
  protected override saveExtraState(): void {}
  protected override loadExtraState(
    prefix: string,
    sd: Record<string, Tensor>,
    _used: Set<string>,
    missing: string[],
  ): void {
    const key = Object.keys(sd).find((k) => k === `${prefix}weight` || k.startsWith(`${prefix}weight.`));
    if (key)
      throw new DistributedError(
        "NOT_SUPPORTED",
        `loadStateDict: "${key}" is a 4-bit base tensor of an FSDP-sharded layer; load the base before FsdpStrategy.setup`,
      );
    missing.push(`${prefix}weight`);
  }
  protected override disposeExtra(): void {
    super.disposeExtra();
    this.take()?.dispose();
  }
}

/** Where one 4-bit state tensor lies in its unit's flat byte buffer. */
export interface RecordSlot {
  readonly key: string;
  readonly dtype: "U8" | "F32" | "BF16" | "F16";
  readonly shape: number[];
  readonly offset: number;
  readonly length: number;
}

export interface LinearSlot {
  /** Path relative to the model root. */
  readonly path: string;
  readonly module: ShardedLinear4bit;
  readonly records: RecordSlot[];
}

type LayerForward = { forward(...args: unknown[]): Tensor };

export class FsdpUnit extends Module {
  /** Set while a checkpoint made by this unit recomputes it in backward. */
  private recomputing = 0;

  constructor(
    /** Dotted path of the decoder layer ("model.layers.3"). */
    readonly path: string,
    /** The original decoder layer: its forward runs, its children are this module's children. */
    readonly layer: Module,
    readonly linears: readonly LinearSlot[],
    /** This rank's 1/N slice of the unit's flat 4-bit bytes (padded), as i32 for the communicator. */
    readonly shard: Int32Array,
    /** Unpadded bytes of the unit's 4-bit state. */
    readonly byteLength: number,
    private readonly owner: UnitOwner,
  ) {
    super();
    for (const [name, child] of layer.namedChildren()) this.registerModule(name, child);
  }

  forward(...args: unknown[]): Tensor {
    // A training forward that nobody checkpoints: checkpoint it here, so backward recomputes (and re-gathers)
    // instead of keeping the whole weights alive from forward to backward.
    if (isGradEnabled() && !this.owner.inBackward && this.recomputing === 0) return this.checkpointed(args);
    return this.runGathered(args);
  }

  private runGathered(args: unknown[]): Tensor {
    (this.layer as Module).training = this.training;
    this.owner.gather(this);
    try {
      return (this.layer as unknown as LayerForward).forward(...args);
    } finally {
      // Without grad nothing refers to the weights after forward. With grad (recomputation in backward), the
      // recomputed graph still needs them for its backward: the owner frees them at the next gather or when
      // backward ends.
      if (!isGradEnabled()) this.owner.release(this);
    }
  }

  /** checkpoint() takes tensors only: the hidden state, plus the tensor fields of a context object. */
  private checkpointed(args: unknown[]): Tensor {
    const [h, ctx, ...rest] = args;
    if (!(h instanceof Tensor) || rest.length > 0 || (ctx !== undefined && (typeof ctx !== "object" || !ctx)))
      throw new DistributedError(
        "NOT_SUPPORTED",
        `${this.path}: FSDP units wrap decoder layers called as forward(hidden, context?); got ${args.length} arguments`,
      );
    const context = (ctx ?? {}) as Record<string, unknown>;
    const keys = Object.keys(context).filter((k) => context[k] instanceof Tensor);
    const run = (x: Tensor, ...ts: Tensor[]): Tensor => {
      const c = ctx === undefined ? undefined : { ...context, ...Object.fromEntries(keys.map((k, i) => [k, ts[i]])) };
      if (!isGradEnabled()) return this.runGathered([x, c]);
      this.recomputing++;
      try {
        return this.runGathered([x, c]);
      } finally {
        this.recomputing--;
      }
    };
    return checkpoint(run, h, ...keys.map((k) => context[k] as Tensor));
  }
}
