/**
 * The CheckpointIO slot: how the model part of a checkpoint is written and read. The default writes the trainable
 * parameters to `model.json` + `model.safetensors`; the CLI plugs in PEFT adapter save/load
 * (adapter_model.safetensors + adapter_config.json) through the same two methods.
 */
import { type Module, Tensor } from "@qlora/tensor";
import { TrainerError } from "../errors";
import { loadStateTree, saveStateTree } from "./state-tree";

export interface CheckpointIO {
  /** Write `state` (the strategy's model state dict: trainable parameters) into `dir` (which exists). */
  saveModel(dir: string, state: Record<string, Tensor>, model: Module): Promise<void>;
  /** Restore the trainable parameters of `model` from `dir`. */
  loadModel(dir: string, model: Module): Promise<void>;
}

export const safetensorsCheckpointIO: CheckpointIO = {
  async saveModel(dir, state) {
    await saveStateTree(dir, "model", state);
  },
  async loadModel(dir, model) {
    const sd = (await loadStateTree(dir, "model")) as Record<string, Tensor>;
    const own = new Map(model.namedParameters());
    for (const [name, t] of Object.entries(sd)) {
      const p = own.get(name);
      if (!(t instanceof Tensor) || !p)
        throw new TrainerError(
          "CHECKPOINT_KEYS",
          `${dir}/model.safetensors: "${name}" is not a parameter of the model`,
          {
            file: dir,
            key: name,
          },
        );
    }
    model.loadStateDict(sd, { strict: false });
    for (const t of Object.values(sd)) t.dispose();
  },
};
