/**
 * Memory report at fit start and end: bytes of frozen base weights (parameters, buffers and packed 4-bit state),
 * trainable adapters, optimizer state, and the activation peak (the runtime's peak minus what was live at start),
 * plus the process RSS. Reported through `log` as memory/* metrics and kept in `reports`.
 */
import { type Module, Tensor, memoryStats, resetPeakMemory } from "@qlora/tensor";
import type { TrainerPlugin } from "../plugin";

export interface MemoryReport {
  readonly baseWeightBytes: number;
  readonly adapterBytes: number;
  readonly optimizerStateBytes: number;
  readonly activationPeakBytes: number;
  readonly rssBytes: number;
}

function tensorBytes(t: Tensor): number {
  return t.size * ({ f32: 4, bf16: 2, f16: 2, i32: 4, u8: 1, bool: 1 } as const)[t.dtype];
}

/** Bytes of every Tensor reachable in a state tree. */
export function stateBytes(x: unknown, depth = 0): number {
  if (x instanceof Tensor) return tensorBytes(x);
  if (ArrayBuffer.isView(x)) return x.byteLength;
  if (x === null || typeof x !== "object" || depth > 8) return 0;
  const values = x instanceof Map ? [...x.values()] : Object.values(x);
  return values.reduce((s: number, v) => s + stateBytes(v, depth + 1), 0);
}

export function measureMemory(
  model: Module,
  optimizerState: unknown,
  liveAtStart: number,
  device = "cpu",
): MemoryReport {
  let base = 0;
  let adapters = 0;
  for (const t of Object.values(model.stateDict())) {
    if (t.requiresGrad) adapters += tensorBytes(t);
    else base += tensorBytes(t);
  }
  const { peakBytes } = memoryStats(device);
  return {
    baseWeightBytes: base,
    adapterBytes: adapters,
    optimizerStateBytes: stateBytes(optimizerState),
    activationPeakBytes: Math.max(0, peakBytes - liveAtStart),
    rssBytes: process.memoryUsage().rss,
  };
}

export function memoryReport(print: (line: string) => void = (l) => process.stderr.write(`${l}\n`)): TrainerPlugin & {
  readonly reports: MemoryReport[];
} {
  const reports: MemoryReport[] = [];
  let liveAtStart = 0;
  const report = async (ctx: Parameters<NonNullable<TrainerPlugin["hooks"]["fit:start"]>>[0], when: string) => {
    const t = ctx.trainer as {
      options: { model: Module; optimizer: { stateDict(): unknown } };
      log(m: Record<string, number>): Promise<void>;
    };
    const r = measureMemory(t.options.model, t.options.optimizer.stateDict(), liveAtStart);
    reports.push(r);
    const mb = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
    print(
      `memory (${when}): base weights ${mb(r.baseWeightBytes)}, adapters ${mb(r.adapterBytes)}, optimizer state ${mb(r.optimizerStateBytes)}, activation peak ${mb(r.activationPeakBytes)}, RSS ${mb(r.rssBytes)}`,
    );
    await t.log({
      "memory/base_weights": r.baseWeightBytes,
      "memory/adapters": r.adapterBytes,
      "memory/optimizer_state": r.optimizerStateBytes,
      "memory/activation_peak": r.activationPeakBytes,
      "memory/rss": r.rssBytes,
    });
  };
  return {
    name: "memory-report",
    reports,
    hooks: {
      "fit:start"(ctx) {
        resetPeakMemory("cpu");
        liveAtStart = memoryStats("cpu").currentBytes;
        return report(ctx, "start");
      },
      "fit:end": (ctx) => report(ctx, "end"),
    },
  };
}
