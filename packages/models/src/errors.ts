/**
 * The package's one error class. `code` is machine-readable; `file` and `key` name the offending file
 * and the config key / tensor name / argument, and the message says what was expected.
 * Codes are plain strings so that each module (loading, tokenizer, generation, GGUF export) can add its own
 * without editing a shared list; each module documents the codes it throws.
 */
export interface ModelsErrorDetails {
  file?: string;
  key?: string;
  cause?: unknown;
}

export class ModelsError extends Error {
  override readonly name = "ModelsError";
  readonly file?: string;
  readonly key?: string;
  constructor(
    readonly code: string,
    message: string,
    details: ModelsErrorDetails = {},
  ) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.file = details.file;
    this.key = details.key;
  }
}
