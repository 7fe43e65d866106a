/**
 * Backend registry. `reference` is always present (priority 0); native backends register themselves
 * (`registerBackend(cpuBackend, 10)`, cuda 20). `getBackend()` picks the highest priority; `getBackend(name)`
 * picks by request. `backendChoice()` says which was chosen and why.
 */
import { TensorError } from "../errors";
import { referenceBackend } from "./reference";
import type { Backend } from "./types";

interface Entry {
  readonly backend: Backend;
  readonly priority: number;
}

const entries = new Map<string, Entry>([["reference", { backend: referenceBackend, priority: 0 }]]);
let lastChoice: { name: string; device: string; reason: string } = {
  name: "reference",
  device: "cpu",
  reason: "no other backend registered",
};
let defaultOverride: Backend | undefined;

/** Conventional priorities: cuda 20 > cpu 10 > reference 0. Re-registering a name replaces it. */
export function registerBackend(backend: Backend, priority: number): void {
  if (!backend || typeof backend.name !== "string")
    throw new TensorError("BAD_BACKEND", "registerBackend: expected a Backend with a name");
  entries.set(backend.name, { backend, priority });
}

export function unregisterBackend(name: string): void {
  if (name === "reference") throw new TensorError("BAD_BACKEND", 'unregisterBackend: "reference" is always present');
  entries.delete(name);
  if (defaultOverride?.name === name) defaultOverride = undefined;
}

/** Registered backends, highest priority first. */
export function availableBackends(): Backend[] {
  return [...entries.values()].sort((a, b) => b.priority - a.priority).map((e) => e.backend);
}

export function getBackend(name?: string): Backend {
  if (name !== undefined) {
    const e = entries.get(name);
    if (!e) {
      throw new TensorError(
        "BACKEND_NOT_FOUND",
        `getBackend: no backend named "${name}" is registered (available: ${[...entries.keys()].join(", ")})`,
      );
    }
    lastChoice = { name, device: e.backend.device, reason: "requested by name" };
    return e.backend;
  }
  if (defaultOverride) {
    lastChoice = { name: defaultOverride.name, device: defaultOverride.device, reason: "set by setDefaultBackend" };
    return defaultOverride;
  }
  const best = availableBackends()[0];
  lastChoice = {
    name: best.name,
    device: best.device,
    reason:
      entries.size === 1
        ? "no other backend registered"
        : `highest priority of: ${availableBackends()
            .map((b) => b.name)
            .join(" > ")}`,
  };
  return best;
}

/** Which backend the last getBackend() call chose, and why. */
export function backendChoice(): { name: string; device: string; reason: string } {
  return { ...lastChoice };
}

/** Make `name` (or a Backend) the default for new tensors; undefined restores priority order. */
export function setDefaultBackend(nameOrBackend: string | Backend | undefined): void {
  if (nameOrBackend === undefined) defaultOverride = undefined;
  else if (typeof nameOrBackend === "string") defaultOverride = getBackend(nameOrBackend);
  else defaultOverride = nameOrBackend;
}

/** The backend that serves a device string: the highest-priority backend on that device. */
export function backendForDevice(device: string): Backend {
  if (defaultOverride && defaultOverride.device === device) return defaultOverride;
  for (const b of availableBackends()) if (b.device === device) return b;
  throw new TensorError(
    "DEVICE_UNAVAILABLE",
    `no registered backend serves device "${device}" (devices: ${[...new Set(availableBackends().map((b) => b.device))].join(", ")})`,
  );
}
