import type { Logger } from "../lib/logger.js";

export type Phase =
  "starting" | "waiting-for-comfyui" | "benchmarking" | "ready" | "error" | "draining" | "stopped";

/**
 * The worker's lifecycle state in one place: its phase, the error_msg the autoscaler hears, whether ComfyUI
 * answers, and the load time. Changes go through the methods, which log and tell `changed` (the reporter's poke).
 */
export class Lifecycle {
  phase: Phase = "starting";
  errorMsg = "";
  comfyUp = false;
  /** Seconds from start to ready; 0 until ready. */
  loadtime = 0;

  constructor(
    private readonly logger: Logger,
    private readonly changed: () => void,
  ) {}

  enter(phase: Phase): Phase {
    const previous = this.phase;
    this.phase = phase;
    return previous;
  }

  /** Sets error_msg ("" clears it); a normal event (shutting down) is logged at info. */
  setError(msg: string, level: "error" | "info" = "error"): void {
    if (this.errorMsg === msg) return;
    this.errorMsg = msg;
    if (msg) this.logger[level]({ stage: "lifecycle" }, msg);
    this.changed();
  }

  /** The worker cannot serve: phase error, and the autoscaler hears why. */
  fail(msg: string): void {
    this.phase = "error";
    this.setError(msg);
  }

  ready(loadtimeS: number): void {
    this.phase = "ready";
    this.loadtime = loadtimeS;
    this.changed();
  }

  get serving(): boolean {
    return this.phase !== "stopped" && this.phase !== "draining";
  }
}
