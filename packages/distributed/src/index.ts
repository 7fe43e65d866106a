export { DistributedError, type DistributedErrorCode } from "./errors";
export {
  type CommArray,
  type CommHandle,
  type CommReduceOp,
  type Communicator,
  referenceCollectives,
} from "./communicator";
export {
  DEFAULT_MPI_LIBRARY,
  DEFAULT_TIMEOUT_MS,
  MpiCommunicator,
  type MpiCommunicatorOptions,
  launchedByMpi,
  mpiAvailability,
  mpiWorld,
} from "./mpi";
export {
  type LaunchOptions,
  type LaunchResult,
  type RankLogger,
  envRank,
  findMpirun,
  launch,
  launchCommand,
  rankLogger,
  runRank,
} from "./launch";
export { type CommStats, DdpStrategy, type DdpOptions, registerDdpStrategy } from "./ddp";
export { LocalCommunicator } from "./local";
export {
  type CommVolume,
  type CommVolumeInput,
  type PerRankMemory,
  type SingleProcessMemory,
  commVolume,
  perRankMemory,
} from "./estimate";
export { ShardedOptimizerStrategy, type ShardedOptions, registerShardedOptimizerStrategy } from "./sharded";
export {
  type FsdpGatherStats,
  type FsdpMemory,
  type FsdpOptions,
  FsdpStrategy,
  registerFsdpStrategy,
  stateTensorBytes,
} from "./fsdp";
export { FsdpUnit, ShardedLinear4bit } from "./fsdp-modules";
export {
  FSDP_OPTIMIZER_FORMAT,
  type FsdpCheckpointOptions,
  type OptimizerManifest,
  fsdpCheckpointIO,
} from "./fsdp-state";
