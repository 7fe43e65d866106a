/** What the data pipeline needs of a tokenizer; @qlora/models' HfTokenizer satisfies it. */
export interface ChatTurn {
  readonly role: string;
  readonly content: string;
}

export interface DataTokenizer {
  encode(text: string, options?: { addSpecialTokens?: boolean }): readonly number[];
  readonly eosTokenId: number | null;
  readonly bosTokenId: number | null;
  readonly padTokenId?: number | null;
  applyChatTemplate?(messages: readonly ChatTurn[], options?: { addGenerationPrompt?: boolean }): string;
}
