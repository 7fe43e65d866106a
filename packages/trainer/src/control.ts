/**
 * The only way hooks steer training (HF's TrainerControl). `save`, `evaluate` and `log` are requests for the
 * current step and are cleared when the next step starts; `stop` stays set once requested.
 */
export class TrainerControl {
  shouldStop = false;
  stopReason: string | undefined;
  shouldSave = false;
  shouldEvaluate = false;
  shouldLog = false;

  stop(reason: string): void {
    this.shouldStop = true;
    this.stopReason ??= reason;
  }
  save(): void {
    this.shouldSave = true;
  }
  evaluate(): void {
    this.shouldEvaluate = true;
  }
  log(): void {
    this.shouldLog = true;
  }
  /** Called by the trainer when a step starts. */
  resetStep(): void {
    this.shouldSave = false;
    this.shouldEvaluate = false;
    this.shouldLog = false;
  }
}
