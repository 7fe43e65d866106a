/**
 * Chat templates: the Jinja source from tokenizer_config.json, rendered by @huggingface/jinja with the variables
 * transformers' `apply_chat_template` passes (messages, add_generation_prompt, bos_token, eos_token, …;
 * `raise_exception` and `strftime_now` come from the library).
 *
 * Error codes (ModelError): `chat_template_syntax` (the template does not parse), `chat_template_render`
 * (it raised, e.g. roles that do not alternate), `bad_messages`.
 */
import { Template } from "@huggingface/jinja";
import { ModelError } from "./errors";

export interface ChatMessage {
  role: string;
  content: string;
  [extra: string]: unknown;
}

export interface ChatTemplateOptions {
  /** Append the header that opens the assistant's turn (default false, as in transformers). */
  addGenerationPrompt?: boolean;
  /** Further template variables (tools, documents, enable_thinking, …), passed through as given. */
  [variable: string]: unknown;
}

export interface CompiledChatTemplate {
  readonly source: string;
  render(messages: readonly ChatMessage[], variables: ChatTemplateOptions & Record<string, unknown>): string;
}

/** Parses a template once; `file` names where it came from in error messages. */
export function compileChatTemplate(source: string, file = "tokenizer_config.json"): CompiledChatTemplate {
  let template: Template;
  try {
    template = new Template(source);
  } catch (e) {
    throw new ModelError(
      "chat_template_syntax",
      `${file}: "chat_template" does not parse as Jinja (${(e as Error).message})`,
      { file, key: "chat_template" },
    );
  }
  return {
    source,
    render(messages, variables) {
      checkMessages(messages);
      const { addGenerationPrompt, ...rest } = variables;
      try {
        return template.render({
          ...rest,
          messages: messages.map((m) => ({ ...m })),
          // either spelling: the template's own variable name is add_generation_prompt
          add_generation_prompt: addGenerationPrompt ?? rest.add_generation_prompt ?? false,
        });
      } catch (e) {
        throw new ModelError(
          "chat_template_render",
          `${file}: rendering "chat_template" failed: ${(e as Error).message}`,
          { file, key: "chat_template" },
        );
      }
    },
  };
}

function checkMessages(messages: readonly ChatMessage[]): void {
  if (!Array.isArray(messages))
    throw new ModelError("bad_messages", "applyChatTemplate: messages must be an array of {role, content}", {
      key: "messages",
    });
  messages.forEach((m, i) => {
    if (typeof m !== "object" || m === null || typeof m.role !== "string" || typeof m.content !== "string")
      throw new ModelError(
        "bad_messages",
        `applyChatTemplate: messages[${i}] must be {role: string, content: string}, got ${JSON.stringify(m)}`,
        { key: `messages[${i}]` },
      );
  });
}
