/**
 * Plugins are plain factory functions returning this object (Rollup/Vite convention). Order: 'pre' plugins, then
 * registration order, then 'post'; plugins flagged `checkpointWriter` always run last (Lightning's rule).
 * A plugin with state implements stateDict/loadStateDict; the trainer saves it in every checkpoint under `name`.
 */
import type { TrainerHooks } from "./events";

export interface TrainerPlugin {
  readonly name: string;
  readonly order?: "pre" | "post";
  readonly checkpointWriter?: boolean;
  readonly hooks: TrainerHooks;
  stateDict?(): unknown;
  loadStateDict?(state: unknown): void;
}

export function orderPlugins(plugins: readonly TrainerPlugin[]): TrainerPlugin[] {
  const rank = (p: TrainerPlugin) => (p.checkpointWriter ? 3 : p.order === "pre" ? 0 : p.order === "post" ? 2 : 1);
  return plugins
    .map((p, i) => ({ p, i }))
    .sort((a, b) => rank(a.p) - rank(b.p) || a.i - b.i)
    .map(({ p }) => p);
}
