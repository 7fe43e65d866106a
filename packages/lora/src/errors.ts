/** The package's one error class: a machine-readable `code` and a message naming the field, key or file. */
export type LoraErrorCode =
  | "BAD_CONFIG"
  | "NO_TARGET"
  | "BAD_ADAPTER"
  | "BAD_MODULE"
  | "BAD_SHAPE"
  | "BAD_FILE"
  | "NOT_MERGEABLE"
  | "NOT_EXPORTABLE";

export class LoraError extends Error {
  constructor(
    readonly code: LoraErrorCode,
    message: string,
  ) {
    super(message);
    this.name = "LoraError";
  }
}
