/** Machine-readable error codes of `@qlora/nf4`. */
export type Nf4ErrorCode =
  | "INVALID_BLOCKSIZE"
  | "INVALID_QUANT_TYPE"
  | "INVALID_DTYPE"
  | "INVALID_SHAPE"
  | "LENGTH_MISMATCH"
  | "INVALID_ARGUMENT"
  | "INVALID_QUANT_STATE"
  | "MISSING_TENSOR"
  | "TENSOR_DTYPE_MISMATCH"
  | "TENSOR_SHAPE_MISMATCH"
  | "STREAM_FINISHED";

/** The one error class of this package: `code` is stable, the message names the argument/key and what was expected. */
export class Nf4Error extends Error {
  readonly code: Nf4ErrorCode;
  constructor(code: Nf4ErrorCode, message: string) {
    super(message);
    this.name = "Nf4Error";
    this.code = code;
  }
}
