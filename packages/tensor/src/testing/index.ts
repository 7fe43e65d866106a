export { backendParitySuite } from "./suite";
export type { ParitySuiteOptions } from "./suite";
export { parityCases, runParity, ParityError, EXACT, TOL_F32, TOL_ACC } from "./parity";
export type { ParityCase, ParityResult, Tolerance } from "./parity";
export { DECODER_BLOCK_FIXTURE, readDecoderBlockFixture, runDecoderBlockFixture } from "./decoder-fixture";
export type { FixtureFile } from "./decoder-fixture";
