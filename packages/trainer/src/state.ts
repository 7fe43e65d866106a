/** What trainer_state.json holds: enough, with the optimizer/RNG/plugin files, to resume bit-exactly. */
export interface LogEntry {
  readonly step: number;
  readonly [metric: string]: number;
}

export interface TrainerState {
  /** Optimizer steps done (skipped non-finite steps count too: they consumed data). */
  globalStep: number;
  epoch: number;
  /** Micro-batches of the current epoch already consumed: the data position. */
  batchInEpoch: number;
  /** Total optimizer steps of this run (max_steps or epochs × steps per epoch). */
  maxSteps: number;
  /** Loss tokens trained on so far. */
  tokensSeen: number;
  logHistory: LogEntry[];
  bestMetric: number | null;
  bestCheckpoint: string | null;
  /** Non-finite losses: in a row now, and in total. */
  nonFiniteInARow: number;
  nonFiniteTotal: number;
}

export function initialState(): TrainerState {
  return {
    globalStep: 0,
    epoch: 0,
    batchInEpoch: 0,
    maxSteps: 0,
    tokensSeen: 0,
    logHistory: [],
    bestMetric: null,
    bestCheckpoint: null,
    nonFiniteInARow: 0,
    nonFiniteTotal: 0,
  };
}
