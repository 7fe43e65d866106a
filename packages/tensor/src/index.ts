export * from "./backend/types";
export { referenceBackend, createReferenceBackend, dtypeBytes } from "./backend/reference";
export type { ReferenceBackendOptions } from "./backend/reference";
export {
  registerBackend,
  unregisterBackend,
  getBackend,
  availableBackends,
  backendChoice,
  setDefaultBackend,
  backendForDevice,
} from "./backend/registry";
export { TensorError } from "./errors";
export { Generator, philox4x32, manualSeed, getGenerator } from "./random";
