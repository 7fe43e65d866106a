/** The package's error base class: a machine-readable `code` and a message naming the offending argument. */
export class TensorError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "TensorError";
  }
}
