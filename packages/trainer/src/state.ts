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

type Check = (v: unknown) => boolean;
const count: Check = (v) => Number.isSafeInteger(v) && (v as number) >= 0;
const FIELDS: ReadonlyArray<readonly [key: string, check: Check, expected: string]> = [
  ["globalStep", count, "a non-negative integer"],
  ["epoch", count, "a non-negative integer"],
  ["batchInEpoch", count, "a non-negative integer"],
  ["tokensSeen", (v) => typeof v === "number" && v >= 0, "a non-negative number"],
  ["nonFiniteInARow", count, "a non-negative integer"],
  ["nonFiniteTotal", count, "a non-negative integer"],
  ["bestMetric", (v) => v === null || typeof v === "number", "a number or null"],
  ["bestCheckpoint", (v) => v === null || typeof v === "string", "a string or null"],
  ["bestStep", (v) => v === undefined || (Number.isSafeInteger(v) && (v as number) >= -1), "an integer ≥ -1"],
  [
    "logHistory",
    (v) => Array.isArray(v) && v.every((e) => e !== null && typeof e === "object" && typeof e.step === "number"),
    "an array of records with a numeric step",
  ],
];

/**
 * A trainer_state.json as read, checked field by field: a resume from a damaged file would otherwise run with a
 * negative step (and so a negative learning rate) or a non-numeric one. `fail(key, message)` raises the error.
 */
export function checkSavedState(
  value: unknown,
  fail: (key: string, message: string) => never,
): TrainerState & { bestStep?: number } {
  if (value === null || typeof value !== "object" || Array.isArray(value)) fail("", "expected a JSON object");
  const record = value as Record<string, unknown>;
  for (const [key, check, expected] of FIELDS)
    if (!check(record[key])) fail(key, `"${key}" must be ${expected}, got ${JSON.stringify(record[key]) ?? "nothing"}`);
  return record as unknown as TrainerState & { bestStep?: number };
}
