import { describe, it } from "vitest";
import { createReferenceBackend } from "../backend/reference";
import type { Backend } from "../backend/types";
import { parityCases } from "./parity";

export interface ParitySuiteOptions {
  /** Seeds for the random shapes (default [1, 2, 3]). */
  readonly seeds?: readonly number[];
  /** Ops to skip (e.g. ops a backend intentionally does not implement yet). */
  readonly skipOps?: readonly string[];
}

/** Registers one vitest test per (op case, seed): `backendParitySuite(cpuBackend)` inside a test file. */
export function backendParitySuite(backend: Backend, options: ParitySuiteOptions = {}): void {
  const reference = createReferenceBackend({ name: "reference(parity)" });
  describe(`backend parity: ${backend.name} vs reference`, () => {
    for (const seed of options.seeds ?? [1, 2, 3]) {
      for (const c of parityCases(seed)) {
        const skip = options.skipOps?.includes(c.op) ?? false;
        (skip ? it.skip : it)(`${c.name} (seed ${seed})`, () => c.run(backend, reference));
      }
    }
  });
}
