export { Trainer, seedEverything } from "./trainer";
export type { BatchSource, LossFn, LossOutput, TrainingArgs, TrainerOptions, FitOptions } from "./trainer";
export { TrainerError } from "./errors";
export { TrainerControl } from "./control";
export { HookBus, EVENT_KINDS } from "./events";
export type {
  EventName,
  Handler,
  TrainerHooks,
  TrainerEventMap,
  HookContext,
  StepContext,
  MicroContext,
  OptimizerContext,
  StepEndContext,
  EvalContext,
  LogContext,
  CheckpointContext,
  ErrorContext,
} from "./events";
export type { TrainerPlugin } from "./plugin";
export type { TrainerOptimizer } from "./optimizer";
export type { TrainerState, LogEntry } from "./state";
export {
  SingleProcessStrategy,
  gradSquaredSum,
  scaleGradients,
  clipByNorm,
  registerStrategy,
  strategyByName,
} from "./strategy";
export type { Strategy, StrategySetup, ReduceOp, NumericArray } from "./strategy";
export { f32Precision, bf16MixedPrecision, precisionByName } from "./precision";
export type { Precision } from "./precision";
export { createSchedule, warmupSteps } from "./schedulers";
export type { SchedulerName, SchedulerOptions } from "./schedulers";
export { safetensorsCheckpointIO } from "./checkpoint/checkpoint-io";
export type { CheckpointIO } from "./checkpoint/checkpoint-io";
export { listCheckpoints, latestCheckpoint, rotateCheckpoints, checkpointDir } from "./checkpoint/checkpoints";
export { saveStateTree, loadStateTree } from "./checkpoint/state-tree";
export { defaultFlow } from "./plugins/default-flow";
export { loadTokenDataset, ExampleStore, seededPermutation } from "./data/dataset";
export type { DataFile, DatasetOptions, DatasetStats, TokenDataset, TokenBatchSource } from "./data/dataset";
export { collate } from "./data/collate";
export type { TokenBatch, ExampleView } from "./data/collate";
export { toExample, detectFormat } from "./data/formats";
export type { ChatFields, DataFormat, Example, ExampleCounts, FormatOptions } from "./data/formats";
export { packBestFitDecreasing } from "./data/pack";
export { readRecords, fileFormatOf } from "./data/read";
export type { FileFormat, SourceRecord } from "./data/read";
export type { DataTokenizer, ChatTurn } from "./data/tokenizer";
export { earlyStopping } from "./plugins/early-stopping";
export type { EarlyStoppingOptions } from "./plugins/early-stopping";
export { metricsFile } from "./plugins/metrics-file";
export { memoryReport, measureMemory, stateBytes } from "./plugins/memory-report";
export type { MemoryReport } from "./plugins/memory-report";
export { progress } from "./plugins/progress";
export type { ProgressOptions } from "./plugins/progress";
export { neftune } from "./plugins/neftune";
export type { NeftuneOptions } from "./plugins/neftune";
