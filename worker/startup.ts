import type { Logger } from "../lib/logger.js";

export type Phase =
  "starting" | "waiting-for-comfyui" | "benchmarking" | "ready" | "error" | "draining" | "stopped";

/** The phases each phase may move to; any other move is refused. */
const NEXT: Readonly<Record<Phase, readonly Phase[]>> = {
  starting: ["waiting-for-comfyui", "error", "draining"],
  "waiting-for-comfyui": ["benchmarking", "error", "draining"],
  benchmarking: ["ready", "error", "draining"],
  ready: ["error", "draining"],
  error: ["draining"],
  draining: ["stopped"],
  stopped: [],
};

/**
 * Why error_msg is set. ComfyUI's own causes go away when it answers again; a failure (a device, the router's
 * key, the benchmark, a listener) stays; shutting down is no error in the log.
 */
export type ErrorCause = "comfyui-late" | "comfyui-down" | "failed" | "shutdown";

const COMFYUI_DOWN = "ComfyUI stopped answering";

/**
 * The worker's start-up phases (waiting for ComfyUI, benchmarking, then ready, error or draining), the error_msg
 * the autoscaler hears and why it is set, whether ComfyUI answers, and the load time. Every change goes through a
 * transition, which logs and tells `changed` (the reporter's poke).
 */
export class Startup {
  private current: Phase = "starting";
  private error: { msg: string; cause: ErrorCause } | undefined;
  private up = false;
  private loaded = 0;

  constructor(
    private readonly logger: Logger,
    private readonly changed: () => void,
  ) {}

  get phase(): Phase {
    return this.current;
  }
  get errorMsg(): string {
    return this.error?.msg ?? "";
  }
  get errorCause(): ErrorCause | undefined {
    return this.error?.cause;
  }
  get comfyUp(): boolean {
    return this.up;
  }
  /** Seconds from start to ready; 0 until ready. */
  get loadtime(): number {
    return this.loaded;
  }
  /** Not draining or stopped. */
  get serving(): boolean {
    return this.current !== "draining" && this.current !== "stopped";
  }

  /** Moves to `next` when the table allows it; returns whether it did. */
  private to(next: Phase): boolean {
    if (!NEXT[this.current].includes(next)) return false;
    this.current = next;
    return true;
  }

  waitForComfy(): boolean {
    return this.to("waiting-for-comfyui");
  }

  /** ComfyUI answered in time or late: the deadline's error goes. */
  benchmarking(): boolean {
    if (!this.to("benchmarking")) return false;
    if (this.error?.cause === "comfyui-late") this.setError(undefined);
    return true;
  }

  ready(loadtimeS: number): boolean {
    if (!this.to("ready")) return false;
    this.loaded = loadtimeS;
    this.changed();
    return true;
  }

  /** The worker cannot serve: phase error, and the autoscaler hears why (once). While draining, the phase stays. */
  fail(msg: string): void {
    this.to("error");
    this.setError({ msg, cause: "failed" });
  }

  /** No backend answered within the start-up deadline; the worker keeps waiting. */
  comfyLate(msg: string): void {
    if (!this.error) this.setError({ msg, cause: "comfyui-late" });
  }

  /**
   * Whether any ComfyUI backend is in the rotation. Going away is an error while serving, unless a failure already
   * says why; coming back clears only ComfyUI's own error.
   */
  comfyui(up: boolean): void {
    if (up === this.up) return;
    this.up = up;
    const cause = this.error?.cause;
    if (up && (cause === "comfyui-late" || cause === "comfyui-down")) this.setError(undefined);
    if (!up && this.serving && cause !== "failed")
      this.setError({ msg: COMFYUI_DOWN, cause: "comfyui-down" });
  }

  /** Stops taking work; from ready the autoscaler hears that it shuts down. Returns the phase it left. */
  drain(): Phase {
    const previous = this.current;
    if (!this.to("draining")) return previous;
    // A normal shutdown: the autoscaler hears it as error_msg, but it is no error in our log.
    if (previous === "ready") this.setError({ msg: "worker is shutting down", cause: "shutdown" }, "info");
    return previous;
  }

  stopped(): void {
    this.to("stopped");
  }

  private setError(
    next: { msg: string; cause: ErrorCause } | undefined,
    level: "error" | "info" = "error",
  ): void {
    if ((this.error?.msg ?? "") === (next?.msg ?? "")) {
      this.error = next;
      return;
    }
    this.error = next;
    if (next) this.logger[level]({ stage: "lifecycle" }, next.msg);
    this.changed();
  }
}
