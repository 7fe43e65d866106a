export type DistributedErrorCode =
  | "MPI_UNAVAILABLE"
  | "MPI_ERROR"
  | "TIMEOUT"
  | "BAD_ARGUMENT"
  | "ACCUMULATION_MISMATCH"
  | "LAUNCH_FAILED"
  | "NOT_SUPPORTED"
  | "NOT_GATHERED"
  | "CHECKPOINT";

/** The one error class of @qlora/distributed; `code` says what went wrong, the message names the argument or library. */
export class DistributedError extends Error {
  constructor(
    readonly code: DistributedErrorCode,
    message: string,
  ) {
    super(message);
    this.name = "DistributedError";
  }
}
