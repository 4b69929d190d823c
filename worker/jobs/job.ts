import { EventEmitter } from "node:events";
import type { ExecutionDetails } from "../../handlers/comfyui/run-prompt.js";
import type { HistoryEntry } from "../../handlers/comfyui/types.js";
import type { OutputEntry } from "../../handlers/outputs.js";
import type { ParsedInput } from "../schema.js";
import type { WorkerError } from "../../lib/errors.js";

export type JobStatus = "queued" | "processing" | "generating" | "completed" | "failed" | "cancelled";
export const FINAL_STATUSES: readonly JobStatus[] = ["completed", "failed", "cancelled"];

export interface Timings {
  queued_at_ms: number;
  /** Time waiting for a ComfyUI slot (after preprocessing). */
  queue_ms: number;
  preprocess_ms: number;
  generation_ms: number;
  postprocess_ms: number;
  completed_at_ms: number | null;
  total_ms: number;
}

/** The result document of /generate/sync, /result/{id}, webhooks and the last line of /generate/stream. */
export interface ResultDocument {
  id: string;
  status: JobStatus;
  message: string;
  comfyui_response:
    (Partial<HistoryEntry> & { execution_details?: ExecutionDetails }) | Record<string, never>;
  output: OutputEntry[];
  timings: Timings;
  error?: Record<string, unknown>;
}

export type JobEvent =
  | { type: "status"; status: JobStatus; message: string }
  | { type: "progress"; node: string | null; value: number; max: number; percent: number }
  | { type: "executing"; node: string }
  | { type: "executed"; node: string; output: unknown }
  | { type: "cached"; nodes: string[] };

/** One accepted request, from admission to its final status. Emits "event" (JobEvent) and "done". */
export class Job extends EventEmitter {
  status: JobStatus = "queued";
  message = "Queued";
  output: OutputEntry[] = [];
  history: HistoryEntry | undefined;
  details: ExecutionDetails | undefined;
  error: WorkerError | undefined;
  readonly abort = new AbortController();
  readonly timings: Timings;
  finishedAt: number | undefined;
  /** The index of the ComfyUI backend that ran it, once dispatched. */
  backend: number | undefined;
  /** Settles when the job reaches a final status. Never rejects. */
  readonly done: Promise<void>;
  private resolveDone!: () => void;

  constructor(
    /** The request; a finished job drops it (see `compact`). */
    public input: ParsedInput,
    readonly workload: number,
    readonly createdAt: number,
  ) {
    super();
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
    this.timings = {
      queued_at_ms: createdAt,
      queue_ms: 0,
      preprocess_ms: 0,
      generation_ms: 0,
      postprocess_ms: 0,
      completed_at_ms: null,
      total_ms: 0,
    };
  }

  get id(): string {
    return this.input.requestId;
  }

  get final(): boolean {
    return FINAL_STATUSES.includes(this.status);
  }

  setStatus(status: JobStatus, message: string): void {
    if (this.final) return;
    this.status = status;
    this.message = message;
    this.emitEvent({ type: "status", status, message });
    if (this.final) {
      this.resolveDone();
      this.emit("done");
    }
  }

  emitEvent(event: JobEvent): void {
    this.emit("event", event);
  }

  /**
   * Drops what only a running job needs (the request's workflow, which may carry megabytes of data: URIs), keeping
   * what `result()` reads. Returns the size of the result document, for the retention caps.
   */
  compact(): number {
    const { requestId, internal } = this.input;
    this.input = {
      requestId,
      workflow: {},
      s3: undefined,
      webhook: undefined,
      ...(internal && { internal }),
    };
    this.removeAllListeners();
    return Buffer.byteLength(JSON.stringify(this.result()));
  }

  /** ComfyUI's own execution time of the prompt (execution_start to its end, from its events), if known. */
  executionMs(): number | undefined {
    const d = this.details;
    if (d?.started_at == null || d.completed_at == null || !(d.completed_at > d.started_at)) return undefined;
    return d.completed_at - d.started_at;
  }

  /**
   * The HTTP status of the job's answer: its error's status for client mistakes (4xx) and retryable failures (5xx);
   * 200 otherwise, a terminal failure included (the document says it failed; a 5xx would make the client retry).
   */
  httpStatus(): number {
    const err = this.error;
    if (!err) return 200;
    if (err.httpStatus >= 500) return err.retryable ? err.httpStatus : 200;
    return err.httpStatus >= 400 ? err.httpStatus : 200;
  }

  result(): ResultDocument {
    const comfyui_response =
      this.history || this.details
        ? { ...(this.history ?? {}), ...(this.details && { execution_details: this.details }) }
        : {};
    return {
      id: this.id,
      status: this.status,
      message: this.message,
      comfyui_response,
      output: this.output,
      timings: { ...this.timings },
      ...(this.error && { error: errorSummary(this.error) }),
    };
  }
}

/** The error as the result shows it: its code and details, without what the document already carries. */
function errorSummary(err: WorkerError): Record<string, unknown> {
  const { execution_details: _d, comfyui_response: _c, ...rest } = err.toJSON();
  return rest;
}
