/**
 * Containers: `ModuleList` holds children named "0", "1", … as torch.nn.ModuleList does, so a list of
 * decoder layers gives state-dict keys like `model.layers.3.mlp.up_proj.weight`.
 */
import { TensorError } from "../errors";
import { Module } from "./module";

export class ModuleList<M extends Module = Module> extends Module implements Iterable<M> {
  private count = 0;

  constructor(modules: Iterable<M> = []) {
    super();
    for (const m of modules) this.append(m);
  }

  get length(): number {
    return this.count;
  }

  append(m: M): this {
    this.registerModule(String(this.count), m);
    this.count++;
    return this;
  }

  /** The i-th module as currently registered (a `setSubmodule` replacement shows up here). */
  at(i: number): M {
    if (!Number.isInteger(i) || i < 0 || i >= this.count)
      throw new TensorError("BAD_INDEX", `ModuleList.at(${i}): index must be an integer in [0, ${this.count})`);
    return this.child<M>(String(i));
  }

  *[Symbol.iterator](): Iterator<M> {
    for (let i = 0; i < this.count; i++) yield this.at(i);
  }
}
