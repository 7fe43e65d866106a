export { backendParitySuite } from "./suite";
export type { ParitySuiteOptions } from "./suite";
export { parityCases, runParity, ParityError, EXACT, TOL_F32, TOL_ACC } from "./parity";
export type { ParityCase, ParityResult, Tolerance } from "./parity";
