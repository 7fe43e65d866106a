/** The one error class of @qlora/trainer: `code` is machine readable, the message names what was wrong and what was expected. */
export class TrainerError extends Error {
  override readonly name = "TrainerError";
  constructor(
    readonly code: string,
    message: string,
    readonly detail?: { readonly file?: string; readonly line?: number; readonly key?: string },
  ) {
    super(message);
  }
}
