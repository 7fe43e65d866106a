export { LoraError } from "./errors";
export type { LoraErrorCode } from "./errors";
export { loraConfig, configToJson, configFromJson, LORA_DEFAULTS } from "./config";
export type { LoraConfig, LoraConfigInput, InitLoraWeights, LoraBias, LoftQConfig } from "./config";
export {
  isTargeted,
  isExcluded,
  patternKey,
  rankAndAlpha,
  loraScaling,
  resolveTargetModules,
  DEFAULT_TARGET_MODULES,
} from "./match";
export {
  loraLinear,
  loraLinearOp,
  loraLinearReference,
  loraForward,
  loraBackward,
  loraDropoutMask,
  baseForward,
  baseInputGrad,
} from "./lora-op";
export type { LoraBase, LoraOpArgs, LoraLinearAttrs, LoraSaved, LoraNeeds } from "./lora-op";
export { doraLinear } from "./dora";
export type { DoraArgs } from "./dora";
export { LoraLinear, ModuleDict, DoraMagnitude } from "./layer";
export type { AdapterSettings, AddAdapterOptions, MergeReport, BaseLayer } from "./layer";
export { ModulesToSaveWrapper, cloneModule } from "./modules-to-save";
export { LoraModel, PEFT_PREFIX } from "./model";
export type { InjectOptions } from "./model";
export { initLora, pissa, olora, loftq, nf4RoundTrip } from "./init";
export type { InitArgs, InitResult } from "./init";
export { svd, qr, svdLowRank } from "./linalg";
export type { Mat, Svd } from "./linalg";
export {
  saveAdapter,
  loadAdapter,
  readAdapterConfig,
  adapterStateDict,
  adapterDir,
  ADAPTER_CONFIG_NAME,
  ADAPTER_WEIGHTS_NAME,
} from "./peft-format";
export type { SaveOptions, LoadOptions } from "./peft-format";
export { exportAdapterGguf } from "./gguf-adapter";
export type { GgufLoraMapping, GgufAdapterOptions, GgufAdapterResult } from "./gguf-adapter";
