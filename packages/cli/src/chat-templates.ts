/** Chat templates the CLI knows by name (train config `chat_template`, `--chat-template`). */

/** ChatML, as Axolotl's `chat_template: chatml` renders it. */
export const CHATML_TEMPLATE =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
