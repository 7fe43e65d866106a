/**
 * Trainer events: colon names, each declared with its kind (style anchors §13, after Rollup/tapable/hookable):
 * - observe: handlers return nothing; async handlers of one event run concurrently.
 * - waterfall: each handler gets the previous result and returns a replacement (loss:transform, batch:transform).
 * - first: handlers run in order and the first non-undefined result wins (checkpoint:resolve).
 * A dispatch stays synchronous while no handler returns a promise, so the hot step loop does not yield per hook.
 */
import type { Tensor } from "@qlora/tensor";
import type { TrainerControl } from "./control";
import type { TrainerState } from "./state";

/** What every handler receives: one object per call. */
export interface HookContext {
  readonly trainer: unknown;
  readonly state: TrainerState;
  readonly control: TrainerControl;
}
export interface StepContext extends HookContext {
  /** Micro-batches of this optimizer step (after batch:transform). */
  readonly batches: readonly unknown[];
  /** Loss tokens of the whole step across ranks (the normaliser). */
  readonly stepTokens: number;
}
export interface MicroContext extends HookContext {
  readonly batch: unknown;
  readonly microStep: number;
  /** Loss of this micro-batch: sum over its tokens divided by the step's token count. */
  readonly loss?: Tensor;
}
export interface OptimizerContext extends HookContext {
  readonly lr: number;
  readonly gradNorm: number | undefined;
}
export interface StepEndContext extends HookContext {
  /** Mean loss per token over the step, or NaN when the step was skipped. */
  readonly loss: number;
  readonly skipped: boolean;
  readonly tokens: number;
}
export interface EvalContext extends HookContext {
  readonly metrics?: Readonly<Record<string, number>>;
}
export interface LogContext extends HookContext {
  readonly metrics: Readonly<Record<string, number>>;
}
export interface CheckpointContext extends HookContext {
  readonly dir: string;
}
export interface ErrorContext extends HookContext {
  readonly error: unknown;
}

type MaybePromise<T> = T | Promise<T>;
interface Observe<C> {
  kind: "observe";
  handler: (ctx: C) => MaybePromise<void>;
}
interface Waterfall<V, C> {
  kind: "waterfall";
  handler: (value: V, ctx: C) => MaybePromise<V>;
}
interface First<V, C> {
  kind: "first";
  handler: (ctx: C) => MaybePromise<V | undefined>;
}

/** Every event: its kind and its handler signature. */
export interface TrainerEventMap {
  "fit:start": Observe<HookContext>;
  "epoch:start": Observe<HookContext>;
  "step:start": Observe<HookContext>;
  "batch:transform": Waterfall<unknown, MicroContext>;
  "loss:transform": Waterfall<Tensor, MicroContext>;
  "backward:before": Observe<MicroContext>;
  "microstep:end": Observe<MicroContext>;
  "optimizer:step:before": Observe<OptimizerContext>;
  "optimizer:step:after": Observe<OptimizerContext>;
  "step:end": Observe<StepEndContext>;
  "epoch:end": Observe<HookContext>;
  "eval:start": Observe<EvalContext>;
  "eval:end": Observe<EvalContext>;
  log: Observe<LogContext>;
  "checkpoint:save": Observe<CheckpointContext>;
  "checkpoint:load": Observe<CheckpointContext>;
  /** Which checkpoint to resume from (a directory), when fit() was not given one. */
  "checkpoint:resolve": First<string, HookContext>;
  "fit:end": Observe<HookContext>;
  error: Observe<ErrorContext>;
}
export type EventName = keyof TrainerEventMap;
export type Handler<E extends EventName> = TrainerEventMap[E]["handler"];
export type TrainerHooks = { [E in EventName]?: Handler<E> };

/** The declared kind of every event (checked at compile time against the map above). */
export const EVENT_KINDS: { readonly [E in EventName]: TrainerEventMap[E]["kind"] } = {
  "fit:start": "observe",
  "epoch:start": "observe",
  "step:start": "observe",
  "batch:transform": "waterfall",
  "loss:transform": "waterfall",
  "backward:before": "observe",
  "microstep:end": "observe",
  "optimizer:step:before": "observe",
  "optimizer:step:after": "observe",
  "step:end": "observe",
  "epoch:end": "observe",
  "eval:start": "observe",
  "eval:end": "observe",
  log: "observe",
  "checkpoint:save": "observe",
  "checkpoint:load": "observe",
  "checkpoint:resolve": "first",
  "fit:end": "observe",
  error: "observe",
};

/** Events whose handlers run in reverse registration order (teardown, as Fastify's onClose). */
const REVERSED: ReadonlySet<EventName> = new Set(["fit:end", "error"]);

type Ctx<E extends EventName> = Parameters<Handler<E>> extends [unknown, infer B] ? B : Parameters<Handler<E>>[0];

function isPromise(x: unknown): x is Promise<unknown> {
  return typeof (x as { then?: unknown } | null)?.then === "function";
}

/** Ordered handler lists per event; `on` returns an unregister function. */
export class HookBus {
  private readonly handlers = new Map<EventName, ((...a: never[]) => unknown)[]>();

  on<E extends EventName>(event: E, handler: Handler<E>): () => void {
    const list = this.handlers.get(event) ?? [];
    list.push(handler as (...a: never[]) => unknown);
    this.handlers.set(event, list);
    return () => {
      const i = list.indexOf(handler as (...a: never[]) => unknown);
      if (i >= 0) list.splice(i, 1);
    };
  }

  private list(event: EventName): ((...a: unknown[]) => unknown)[] {
    const l = (this.handlers.get(event) ?? []) as ((...a: unknown[]) => unknown)[];
    return REVERSED.has(event) ? [...l].reverse() : [...l];
  }

  /** observe: every handler; a promise only when some handler returned one. */
  emit<E extends EventName>(event: E, ctx: Ctx<E>): void | Promise<void> {
    const pending: Promise<unknown>[] = [];
    for (const h of this.list(event)) {
      const r = h(ctx);
      if (isPromise(r)) pending.push(r);
    }
    if (pending.length) return Promise.all(pending).then(() => undefined);
  }

  /** waterfall: value threaded through the handlers in order. */
  async waterfall<E extends "batch:transform" | "loss:transform">(
    event: E,
    value: Parameters<Handler<E>>[0],
    ctx: Ctx<E>,
  ): Promise<Parameters<Handler<E>>[0]> {
    let v = value;
    for (const h of this.list(event)) {
      const r = h(v, ctx);
      v = (isPromise(r) ? await r : r) as typeof v;
    }
    return v;
  }

  /** first: the first non-undefined result. */
  async first<E extends "checkpoint:resolve">(event: E, ctx: Ctx<E>): Promise<string | undefined> {
    for (const h of this.list(event)) {
      const r = h(ctx);
      const v = isPromise(r) ? await r : r;
      if (v !== undefined) return v as string;
    }
    return undefined;
  }
}
