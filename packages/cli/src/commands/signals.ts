/**
 * Graceful interruption of a long command (train): the first SIGINT (Ctrl-C) or SIGTERM (plain `kill`) aborts the
 * signal, so the run writes a checkpoint at the end of the current step and stops; a second one of either exits
 * at once. The exit code of an interrupted run is 128 + the signal's number (SIGINT 130, SIGTERM 143), as shells
 * report a process a signal ended, so scripts can tell it from a finished run.
 */
import { constants } from "node:os";

export type InterruptSignal = "SIGINT" | "SIGTERM";
const SIGNALS: readonly InterruptSignal[] = ["SIGINT", "SIGTERM"];

/** 128 + the signal's number: 130 for SIGINT, 143 for SIGTERM. */
export function signalExitCode(signal: InterruptSignal): number {
  return 128 + constants.signals[signal];
}

export interface Interruption {
  /** Aborted by the first SIGINT or SIGTERM. */
  readonly signal: AbortSignal;
  /** The signal that aborted it, if any. */
  received(): InterruptSignal | undefined;
  /** Remove the handlers (the process's default handling of both signals comes back). */
  dispose(): void;
}

/**
 * Listen for SIGINT and SIGTERM: the first aborts (after `onFirst` says so), the second calls `exit` with
 * 128 + its number (default: process.exit).
 */
export function onInterrupt(
  onFirst: (signal: InterruptSignal) => void,
  exit: (code: number) => void = (code) => process.exit(code),
): Interruption {
  const abort = new AbortController();
  let first: InterruptSignal | undefined;
  const handlers = SIGNALS.map((name) => {
    const handler = () => {
      if (first !== undefined) return exit(signalExitCode(name));
      first = name;
      onFirst(name);
      abort.abort();
    };
    process.on(name, handler);
    return [name, handler] as const;
  });
  return {
    signal: abort.signal,
    received: () => first,
    dispose() {
      for (const [name, handler] of handlers) process.removeListener(name, handler);
    },
  };
}
