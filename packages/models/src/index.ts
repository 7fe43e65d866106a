export { ModelError } from "./errors";
export type { ModelErrorCode } from "./errors";
export { parseConfig, SUPPORTED_ARCHITECTURES } from "./config";
export type { Architecture, ModelConfig, RopeScaling } from "./config";
export { inverseFrequencies, RotaryEmbedding } from "./rope";
export { randomLayers, isSkipped } from "./layers";
export type { LayerSource, LinearLike, QuantizeOptions, RandomLayerOptions } from "./layers";
export { KVCache } from "./kv-cache";

export {
  CausalLM,
  LlamaForCausalLM,
  MistralForCausalLM,
  Qwen2ForCausalLM,
  Qwen3ForCausalLM,
  DecoderModel,
  DecoderLayer,
  Attention,
  MLP,
  TiedLmHead,
  createModel,
} from "./causal-lm";
export type { ForwardArgs, ForwardOutput, CausalLMOptions } from "./causal-lm";
export { batchLoss } from "./batch-loss";
export type { TokenRows } from "./batch-loss";
export { loadModel } from "./load";
export type { LoadOptions, LoadedModel } from "./load";
export { dequantizeModel, saveDense, saveQuantized, quantizedRecords, quantizationConfig, upcastLinears } from "./save";
export type { SaveDenseOptions, SaveQuantizedOptions } from "./save";
export { HfTokenizer, loadTokenizer } from "./tokenizer";
export type { EncodeOptions, DecodeOptions } from "./tokenizer";
export { compileChatTemplate } from "./chat-template";
export type { ChatMessage, ChatTemplateOptions, CompiledChatTemplate } from "./chat-template";
export { writeTinyTokenizer, tinyTokenizerFiles } from "./tiny-tokenizer";
export type { TinyTokenizerFamily, TinyTokenizerInfo } from "./tiny-tokenizer";
export {
  argmax,
  applyRepetitionPenalty,
  applyTemperature,
  topKFilter,
  topPFilter,
  minPFilter,
  softmax,
  sampleCategorical,
  processLogits,
  selectToken,
  isSampling,
} from "./sampling";
export type { SamplingOptions } from "./sampling";
export { eosTokenIds, generate, generateStream } from "./generate";
export type {
  GenerateOptions,
  GenerationResult,
  TokenEvent,
  FinishReason,
  GenerationModel,
  GenerationCache,
  GenerationTokenizer,
} from "./generate";
export {
  GGUF_ARCHITECTURES,
  ggufArchitecture,
  ggufTensorName,
  isSkippedForGguf,
  qkPermuteHeads,
  permuteQkRows,
} from "./gguf-names";
export {
  exportGguf,
  hyperparameters as ggufHyperparameters,
  tokenizerMetadata as ggufTokenizerMetadata,
} from "./gguf-export";
export type { GgufOutType, GgufExportOptions, GgufExportResult } from "./gguf-export";
