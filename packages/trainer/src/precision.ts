/**
 * The Precision slot: which dtypes the model computes and keeps its trainable weights in.
 * - "f32": everything f32 (CPU default).
 * - "bf16-mixed": frozen weights stored bf16 (the model is loaded that way: the runtime's matmul reads bf16 per
 *   tile, so nothing is widened whole) while the trainable parameters stay f32 master weights that the optimizer
 *   updates. The slot checks that contract at setup rather than silently training bf16 adapters.
 */
import type { Module, Tensor } from "@qlora/tensor";
import { TrainerError } from "./errors";

export interface Precision {
  readonly name: string;
  setup(model: Module, trainable: ReadonlyMap<string, Tensor>): void;
}

export const f32Precision: Precision = {
  name: "f32",
  setup(_model, trainable) {
    for (const [name, p] of trainable) requireF32(name, p, "f32");
  },
};

export const bf16MixedPrecision: Precision = {
  name: "bf16-mixed",
  setup(model, trainable) {
    for (const [name, p] of trainable) requireF32(name, p, "bf16-mixed (f32 master adapters)");
    for (const [name, p] of model.namedParameters()) {
      if (!p.requiresGrad && p.dtype === "f32")
        throw new TrainerError(
          "PRECISION",
          `precision bf16-mixed: frozen parameter "${name}" is f32; load the base model with dtype bf16 (or use precision "f32")`,
          { key: name },
        );
    }
  },
};

function requireF32(name: string, p: Tensor, what: string): void {
  if (p.dtype !== "f32")
    throw new TrainerError(
      "PRECISION",
      `precision ${what}: trainable parameter "${name}" is ${p.dtype}, expected f32`,
      {
        key: name,
      },
    );
}

export function precisionByName(name: string): Precision {
  if (name === "f32") return f32Precision;
  if (name === "bf16-mixed") return bf16MixedPrecision;
  throw new TrainerError("BAD_ARGUMENT", `precision "${name}" is unknown; expected "f32" or "bf16-mixed"`);
}
