import type { ChatTurn, DataTokenizer } from "../../src/data/tokenizer";

/** A byte-per-token tokenizer for data tests: ids 3.. are char codes mod 250; 1 = BOS, 2 = EOS, 0 = pad. */
export const charTokenizer: DataTokenizer = {
  bosTokenId: 1,
  eosTokenId: 2,
  padTokenId: 0,
  encode(text, options) {
    const ids = [...text].map((c) => 3 + (c.charCodeAt(0) % 250));
    return options?.addSpecialTokens === false ? ids : [1, ...ids];
  },
  applyChatTemplate(messages: readonly ChatTurn[], options) {
    const body = messages.map((m) => `<${m.role}>${m.content}</>`).join("");
    return body + (options?.addGenerationPrompt ? "<assistant>" : "");
  },
};
