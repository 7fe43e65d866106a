/**
 * One error family for the package. Every failure to read or write a file is a
 * `FormatsError` (or one of its two format-specific subclasses) with a machine-readable
 * `code`, the offending `file` and, where one is involved, the `tensor` or metadata `key`.
 */
export type FormatsErrorCode =
  // shared
  | "io"
  | "short_read"
  | "invalid_argument"
  | "write_order"
  | "write_incomplete"
  | "writer_closed"
  // safetensors
  | "header_length"
  | "header_too_large"
  | "header_utf8"
  | "header_json"
  | "header_not_object"
  | "duplicate_name"
  | "bad_tensor_entry"
  | "unknown_dtype"
  | "bad_shape"
  | "size_mismatch"
  | "out_of_bounds"
  | "overlap"
  | "gap"
  | "bad_metadata"
  | "index_json"
  | "index_missing_weight_map"
  | "shard_missing"
  | "wrong_shard"
  | "unlisted_tensor"
  | "tensor_not_found"
  // gguf
  | "bad_magic"
  | "unsupported_version"
  | "truncated"
  | "count_too_large"
  | "length_too_large"
  | "bad_string"
  | "unknown_value_type"
  | "bad_value"
  | "nesting_too_deep"
  | "duplicate_key"
  | "bad_alignment"
  | "name_too_long"
  | "too_many_dims"
  | "bad_dim"
  | "unknown_type"
  | "block_size"
  | "misaligned_offset"
  | "unsupported_type";

export interface FormatsErrorDetails {
  file?: string;
  tensor?: string;
  key?: string;
  cause?: unknown;
}

export class FormatsError extends Error {
  readonly code: FormatsErrorCode;
  readonly file: string | undefined;
  readonly tensor: string | undefined;
  readonly key: string | undefined;

  constructor(code: FormatsErrorCode, message: string, details: FormatsErrorDetails = {}) {
    const where: string[] = [];
    if (details.file !== undefined) where.push(`file ${JSON.stringify(details.file)}`);
    if (details.tensor !== undefined) where.push(`tensor ${JSON.stringify(details.tensor)}`);
    if (details.key !== undefined) where.push(`key ${JSON.stringify(details.key)}`);
    super(
      where.length > 0 ? `${where.join(", ")}: ${message}` : message,
      details.cause === undefined ? undefined : { cause: details.cause },
    );
    this.name = "FormatsError";
    this.code = code;
    this.file = details.file;
    this.tensor = details.tensor;
    this.key = details.key;
  }
}

/** Any problem with a safetensors file, index or writer call. */
export class SafetensorsError extends FormatsError {
  constructor(code: FormatsErrorCode, message: string, details: FormatsErrorDetails = {}) {
    super(code, message, details);
    this.name = "SafetensorsError";
  }
}

/** Any problem with a GGUF file or writer call. */
export class GgufError extends FormatsError {
  constructor(code: FormatsErrorCode, message: string, details: FormatsErrorDetails = {}) {
    super(code, message, details);
    this.name = "GgufError";
  }
}
