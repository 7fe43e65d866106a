/** The package's error: a machine-readable `code`, the file and key at fault, and what was expected. */
export type ModelErrorCode =
  | "config_missing_key"
  | "config_bad_value"
  | "config_unreadable"
  | "unsupported_architecture"
  | "unsupported_rope_scaling"
  | "unsupported_quantization"
  | "tensor_missing"
  | "tensor_shape"
  | "tensor_dtype"
  | "bad_argument"
  // tokenizer.ts, chat-template.ts
  | "tokenizer_missing"
  | "tokenizer_json"
  | "tokenizer_invalid"
  | "tokenizer_config_json"
  | "tokenizer_config_invalid"
  | "bad_token_id"
  | "no_chat_template"
  | "chat_template_syntax"
  | "chat_template_render"
  | "bad_messages"
  // sampling.ts, generate.ts
  | "bad_generation_option"
  | "non_finite_logits"
  // gguf-names.ts, gguf-export.ts
  | "gguf_unmapped_tensor"
  | "gguf_unsupported";

export class ModelError extends Error {
  constructor(
    readonly code: ModelErrorCode,
    message: string,
    readonly details: { file?: string; key?: string } = {},
  ) {
    super(message);
    this.name = "ModelError";
  }
  get file(): string | undefined {
    return this.details.file;
  }
  get key(): string | undefined {
    return this.details.key;
  }
}
