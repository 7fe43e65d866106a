/** The CLI's one error class: `code` is machine-readable, the message is one readable paragraph. */
export type CliErrorCode =
  | "CONFIG_NOT_FOUND"
  | "CONFIG_PARSE"
  | "CONFIG_INVALID"
  | "BAD_ARGUMENT"
  | "BAD_PATH"
  | "UNSUPPORTED"
  | "JOB_FAILED";

export class CliError extends Error {
  override readonly name = "CliError";
  constructor(
    readonly code: CliErrorCode,
    message: string,
    /** The process exit code this error maps to (2 = usage/config, 1 = runtime). */
    readonly exitCode = 2,
  ) {
    super(message);
  }
}
