import { createHash, randomUUID } from "node:crypto";
import { EventEmitter } from "node:events";
import type { ExecutionDetails } from "../../handlers/comfyui/run-prompt.js";
import type { HistoryEntry } from "../../handlers/comfyui/types.js";
import type { OutputEntry } from "../../handlers/outputs.js";
import type { DeliveryRecord } from "../../handlers/webhook.js";
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
  /** The webhook delivery of the final document, once one was started (this worker's view only). */
  webhook?: DeliveryRecord;
}

/**
 * JSON with every object's keys sorted, so that equal values have one spelling whatever the caller's key order.
 * Iterative (an explicit stack of what is left to write): a body as deep as MAX_JSON_DEPTH allows must not overflow
 * the call stack, as recursion (ours, or JSON.stringify's with a replacer) does at a few thousand levels.
 */
function canonicalJson(value: unknown): string {
  type Item = { text: string } | { value: unknown };
  const out: string[] = [];
  const todo: Item[] = [{ value }];
  const pushReversed = (items: Item[]) => {
    for (let i = items.length - 1; i >= 0; i--) todo.push(items[i]!);
  };
  while (todo.length > 0) {
    const item = todo.pop()!;
    if ("text" in item) {
      out.push(item.text);
    } else if (Array.isArray(item.value)) {
      const items: Item[] = item.value.map((v: unknown) => ({ value: v ?? null }));
      pushReversed([
        { text: "[" },
        ...items.flatMap((v, i) => (i > 0 ? [{ text: "," }, v] : [v])),
        { text: "]" },
      ]);
    } else if (item.value !== null && typeof item.value === "object") {
      const entries = Object.entries(item.value as Record<string, unknown>)
        .filter(([, v]) => v !== undefined)
        .sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0));
      pushReversed([
        { text: "{" },
        ...entries.flatMap(([k, v], i): Item[] => [
          { text: `${i > 0 ? "," : ""}${JSON.stringify(k)}:` },
          { value: v },
        ]),
        { text: "}" },
      ]);
    } else {
      out.push(JSON.stringify(item.value) ?? "null");
    }
  }
  return out.join("");
}

/** A request's optional settings as given: empty texts mean "not given" (as everywhere), and so does `{}`. */
function given(settings: Record<string, unknown> | undefined): Record<string, unknown> | undefined {
  const kept = Object.entries(settings ?? {}).filter(([, v]) => v !== undefined && v !== "");
  return kept.length > 0 ? Object.fromEntries(kept) : undefined;
}

/**
 * What binds a request_id to the request that made it: a SHA-256 of the canonical request as the caller sent it
 * (the workflow before `__RANDOM_INT__` is seeded, storage and webhook settings, their secrets included). A retry of
 * the same request hashes the same and gets the job's answer; any other request under that id is refused.
 */
export function requestHash(input: ParsedInput): string {
  const canonical = canonicalJson({
    workflow: input.workflow,
    s3: given(input.s3),
    webhook: given(input.webhook),
  });
  return createHash("sha256").update(canonical).digest("hex");
}

export type JobEvent =
  | { type: "status"; status: JobStatus; message: string }
  | { type: "progress"; node: string | null; value: number; max: number; percent: number }
  | { type: "executing"; node: string }
  | { type: "executed"; node: string; output: unknown }
  | { type: "cached"; nodes: string[] }
  | DownloadEvent
  | PreviewEvent;

/**
 * A model the job waits on is being downloaded (before the prompt goes to ComfyUI, so no node runs): the reference
 * as shown in logs (no query, no credentials), its models folder, the bytes on disk and the size its source declared
 * (null when it declares none, and then `percent` is null too).
 */
export interface DownloadEvent {
  type: "download";
  model: string;
  folder: string;
  received: number;
  total: number | null;
  percent: number | null;
}

/**
 * A live preview (only for a request that asked for them): the image in base64 (`data`), its MIME type and size, the
 * node that made it and its step (null when unknown).
 */
export interface PreviewEvent {
  type: "preview";
  node: string | null;
  step: number | null;
  max: number | null;
  mime: string;
  width: number;
  height: number;
  data: string;
}

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
  /** The webhook delivery of the final document, once started. */
  webhook: DeliveryRecord | undefined;
  /**
   * Download time of the models the job names that were neither downloaded nor being downloaded when it was
   * accepted (seconds, as priced then), and the part of its load that stands for it (workload units; what is left
   * of it as the downloads progress, 0 once the job's models are on disk). Counted in the load in flight (cur_load,
   * admission), never in the job's `workload` (see LoadSignal.downloadPrice).
   */
  downloadSeconds = 0;
  downloadWorkload = 0;
  /** It waited on a model download (its own or one it joined): its prompt was the model's first use. */
  fetchedModels = false;
  /** The last preview sent, while it runs (for a request that asked for previews). */
  preview: PreviewEvent | undefined;
  /** The request's hash (`requestHash`), kept past `compact` so that a retry can be told from another request. */
  readonly requestHash: string;
  /** This run of the request_id (a retry after a retryable failure is another run): what a cancel request names. */
  readonly runId = randomUUID();
  /** Settles when the job reaches a final status. Never rejects. */
  readonly done: Promise<void>;
  /**
   * Settles once the endpoint's bucket was asked to record the job (its claim settled: written, refused or
   * unreachable); at once where there is no bucket. Never rejects. An accepted-but-not-finished answer (202) waits
   * for it: a worker killed after answering leaves a job that every worker knows.
   */
  recorded: Promise<void> = Promise.resolve();
  /**
   * Settles once the final document's first write to the bucket settled (written, or failed and left to its
   * retries); at once where there is no bucket. Never rejects. An answer that tells the end, and the webhook, wait
   * for it: a worker killed after answering leaves the bucket saying what the caller was told.
   */
  published: Promise<void> = Promise.resolve();
  private resolveDone!: () => void;

  constructor(
    /** The request; a finished job drops it (see `compact`). */
    public input: ParsedInput,
    readonly workload: number,
    readonly createdAt: number,
  ) {
    super();
    this.requestHash = requestHash(input);
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
    this.preview = undefined;
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
      ...(this.webhook && { webhook: { ...this.webhook } }),
    };
  }
}

/** The error as the result shows it: its code and details, without what the document already carries. */
function errorSummary(err: WorkerError): Record<string, unknown> {
  const { execution_details: _d, comfyui_response: _c, ...rest } = err.toJSON();
  return rest;
}
