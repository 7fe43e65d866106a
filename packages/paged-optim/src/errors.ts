/** Machine-readable reasons an optimizer call fails. */
export type OptimErrorCode =
  | "BAD_ARGUMENT"
  | "BAD_PARAM"
  | "DUPLICATE_PARAM"
  | "NO_KERNEL"
  | "STATE_MISMATCH"
  | "STATE_FILE";

/** The package's one error class: `code` is machine-readable; the message names the argument, parameter or file. */
export class OptimError extends Error {
  override readonly name = "OptimError";
  constructor(
    readonly code: OptimErrorCode,
    message: string,
  ) {
    super(message);
  }
}
