import { randomUUID } from "node:crypto";
import { got, type Got, RequestError } from "got";
import { ComfyUnavailableError, InvalidWorkflowError } from "../../lib/errors.js";
import type {
  ComfyCapabilities,
  ComfyJob,
  HistoryEntry,
  ObjectInfoNode,
  QueuePromptResponse,
  Workflow,
} from "./types.js";

/** A device's memory as ComfyUI reports it, in bytes; `type`: torch's device type ("cuda", "cpu", ...). */
export interface DeviceMemory {
  type: string;
  vramTotal: number;
  vramFree: number;
}

export interface ComfyClientOptions {
  baseUrl: string;
  requestTimeoutMs: number;
}

/**
 * ComfyUI's HTTP API. Failure contract: a refused workflow is InvalidWorkflowError (400, with ComfyUI's `error` and
 * `node_errors`), and so is a 500 from /prompt while ComfyUI otherwise answers; ComfyUI not answering, or
 * answering 5xx elsewhere, is ComfyUnavailableError (retryable). Every call has a
 * deadline and takes an AbortSignal. The routes of newer ComfyUIs (the jobs API) are called only where
 * `capabilities()` found them.
 */
export class ComfyClient {
  readonly baseUrl: string;
  private readonly http: Got;

  constructor(opts: ComfyClientOptions) {
    this.baseUrl = opts.baseUrl.replace(/\/+$/, "");
    this.http = got.extend({
      prefixUrl: this.baseUrl,
      timeout: { request: opts.requestTimeoutMs },
      retry: { limit: 0 },
      throwHttpErrors: false,
    });
  }

  private async call<T>(
    method: "GET" | "POST",
    path: string,
    opts: { json?: unknown; signal?: AbortSignal | undefined; what: string },
  ): Promise<{ status: number; body: T }> {
    try {
      const res = await this.http<string>(path, {
        method,
        ...(opts.json !== undefined && { json: opts.json }),
        ...(opts.signal !== undefined && { signal: opts.signal }),
      });
      const text = res.body;
      let body: unknown = text;
      if (text.length > 0 && /json/.test(String(res.headers["content-type"] ?? ""))) body = JSON.parse(text);
      if (res.statusCode >= 500) {
        throw new ComfyUnavailableError(`ComfyUI answered ${res.statusCode} to ${opts.what}`, {
          comfyui_status: res.statusCode,
        });
      }
      return { status: res.statusCode, body: body as T };
    } catch (err) {
      if (err instanceof ComfyUnavailableError) throw err;
      if (opts.signal?.aborted) throw opts.signal.reason ?? err;
      const why = err instanceof RequestError ? `${err.code}: ${err.message}` : String(err);
      throw new ComfyUnavailableError(`ComfyUI did not answer ${opts.what} (${why})`, undefined, {
        cause: err,
      });
    }
  }

  /**
   * Queues a workflow under our own `promptId`, so that its events can be followed before the answer arrives, and
   * under `clientId`, the WebSocket that hears them (ComfyUI sends a prompt's progress only to its client).
   * `previewMethod` asks for this prompt's previews (`extra_data.preview_method`, read by ComfyUI >= 0.5.0; older
   * versions ignore it and use their `--preview-method`); absent, the server's default holds (`none` unless set).
   */
  async queuePrompt(
    workflow: Workflow,
    opts: {
      clientId: string;
      promptId: string;
      signal?: AbortSignal | undefined;
      front?: boolean;
      previewMethod?: string | undefined;
    },
  ): Promise<QueuePromptResponse> {
    const signal = opts.signal;
    if (opts.clientId === "") throw new TypeError("queuePrompt needs the client id of the WebSocket");
    let answer: { status: number; body: Record<string, unknown> };
    try {
      answer = await this.call<Record<string, unknown>>("POST", "prompt", {
        json: {
          prompt: workflow,
          client_id: opts.clientId,
          prompt_id: opts.promptId,
          // Ahead of the prompts already queued (a health probe must not wait for them).
          ...(opts.front && { front: true }),
          ...(opts.previewMethod && { extra_data: { preview_method: opts.previewMethod } }),
        },
        signal,
        what: "POST /prompt",
      });
    } catch (err) {
      throw await this.promptFailure(err, signal);
    }
    const { status, body } = answer;
    if (status === 400 || (status === 200 && typeof body?.prompt_id !== "string")) {
      const error = (body?.error ?? {}) as { message?: string; type?: string };
      throw new InvalidWorkflowError(error.message ?? "ComfyUI refused the workflow", {
        error: body?.error ?? body,
        node_errors: body?.node_errors ?? {},
      });
    }
    if (status !== 200) throw new ComfyUnavailableError(`ComfyUI answered ${status} to POST /prompt`);
    return body as unknown as QueuePromptResponse;
  }

  /**
   * A 500 from /prompt while ComfyUI otherwise answers is this workflow's failure (ComfyUI raising on a node it
   * cannot validate, such as some legacy node names), not unavailability: retrying would send it again forever.
   */
  private async promptFailure(err: unknown, signal: AbortSignal | undefined): Promise<unknown> {
    if (!(err instanceof ComfyUnavailableError) || err.details?.comfyui_status !== 500) return err;
    const probe = AbortSignal.timeout(5_000);
    const up = await this.systemStats(signal ? AbortSignal.any([signal, probe]) : probe).then(
      () => true,
      () => false,
    );
    if (!up) return err;
    return new InvalidWorkflowError("ComfyUI failed with 500 on this workflow while otherwise answering", {
      error: { type: "comfyui_server_error", message: err.message },
      node_errors: {},
      comfyui_status: 500,
    });
  }

  /** The history entry of one prompt, or undefined while it is not finished. */
  async history(promptId: string, signal?: AbortSignal): Promise<HistoryEntry | undefined> {
    const { body } = await this.call<Record<string, HistoryEntry>>(
      "GET",
      `history/${encodeURIComponent(promptId)}`,
      {
        signal,
        what: "GET /history",
      },
    );
    return typeof body === "object" && body !== null ? body[promptId] : undefined;
  }

  /**
   * A prompt's state in the jobs API (only where `capabilities().jobsApi`), or undefined when ComfyUI knows no such
   * prompt (neither queued, running nor in its history).
   */
  async job(promptId: string, signal?: AbortSignal): Promise<ComfyJob | undefined> {
    const { status, body } = await this.call<ComfyJob>("GET", `api/jobs/${encodeURIComponent(promptId)}`, {
      signal,
      what: "GET /api/jobs/{id}",
    });
    if (status === 404) return undefined;
    if (status !== 200 || typeof body !== "object" || body === null || typeof body.status !== "string")
      throw new ComfyUnavailableError(`ComfyUI answered ${status} to GET /api/jobs/{id} without a job`);
    return body;
  }

  /**
   * Cancels one prompt atomically (only where `capabilities().atomicCancel`): interrupted only while it is the one
   * running, removed if it waits, nothing otherwise. Resolves with whether ComfyUI cancelled something.
   */
  async cancelJob(promptId: string, signal?: AbortSignal): Promise<boolean> {
    const { status, body } = await this.call<{ cancelled?: unknown }>(
      "POST",
      `api/jobs/${encodeURIComponent(promptId)}/cancel`,
      { signal, what: "POST /api/jobs/{id}/cancel" },
    );
    if (status !== 200)
      throw new ComfyUnavailableError(`ComfyUI answered ${status} to POST /api/jobs/{id}/cancel`);
    return body?.cancelled === true;
  }

  /** Drops finished prompts from ComfyUI's history (it keeps up to 10,000 in memory otherwise). */
  async deleteHistory(promptIds: string[], signal?: AbortSignal): Promise<void> {
    const { status } = await this.call("POST", "history", {
      json: { delete: promptIds },
      signal,
      what: "POST /history",
    });
    if (status !== 200) throw new ComfyUnavailableError(`ComfyUI answered ${status} to POST /history`);
  }

  /**
   * What this ComfyUI offers beyond the 0.3 API, asked of it without side effects: the jobs API answering a list of
   * one, the cancel route answering for an id nobody uses (a no-op there; an older ComfyUI answers 404 or 405), its
   * feature flags. A route that is missing is a feature it lacks; ComfyUI not answering is ComfyUnavailableError.
   */
  async capabilities(signal?: AbortSignal): Promise<ComfyCapabilities> {
    const [jobs, cancel, features] = await Promise.all([
      this.call<{ jobs?: unknown }>("GET", "api/jobs?limit=1", { signal, what: "GET /api/jobs" }),
      this.call<{ cancelled?: unknown }>("POST", `api/jobs/${randomUUID()}/cancel`, {
        signal,
        what: "POST /api/jobs/{id}/cancel",
      }),
      this.call<Record<string, unknown>>("GET", "features", { signal, what: "GET /features" }),
    ]);
    const isObject = (v: unknown): v is Record<string, unknown> =>
      typeof v === "object" && v !== null && !Array.isArray(v);
    return {
      jobsApi: jobs.status === 200 && isObject(jobs.body) && Array.isArray(jobs.body.jobs),
      atomicCancel:
        cancel.status === 200 && isObject(cancel.body) && typeof cancel.body.cancelled === "boolean",
      featureFlags: features.status === 200 && isObject(features.body) ? features.body : {},
    };
  }

  /** Removes prompts that have not started from ComfyUI's queue. */
  async deleteFromQueue(promptIds: string[], signal?: AbortSignal): Promise<void> {
    await this.call("POST", "queue", { json: { delete: promptIds }, signal, what: "POST /queue" });
  }

  /** Interrupts `promptId` only if it is the one running (ComfyUI >= 0.3.4x honours prompt_id). */
  async interrupt(promptId: string, signal?: AbortSignal): Promise<void> {
    await this.call("POST", "interrupt", { json: { prompt_id: promptId }, signal, what: "POST /interrupt" });
  }

  async queue(signal?: AbortSignal): Promise<{ queue_running: unknown[][]; queue_pending: unknown[][] }> {
    const { body } = await this.call<{ queue_running: unknown[][]; queue_pending: unknown[][] }>(
      "GET",
      "queue",
      {
        signal,
        what: "GET /queue",
      },
    );
    return body;
  }

  async free(signal?: AbortSignal): Promise<void> {
    await this.call("POST", "free", {
      json: { unload_models: true, free_memory: true },
      signal,
      what: "POST /free",
    });
  }

  async systemStats(signal?: AbortSignal): Promise<Record<string, unknown>> {
    const { status, body } = await this.call<Record<string, unknown>>("GET", "system_stats", {
      signal,
      what: "GET /system_stats",
    });
    if (status !== 200) throw new ComfyUnavailableError(`ComfyUI answered ${status} to GET /system_stats`);
    return body;
  }

  /**
   * Its first device's memory from /system_stats (`devices[0]`), or undefined when it lists none or without numbers.
   * On the CPU (`type` "cpu") the numbers are the machine's RAM. Failure contract as `systemStats`.
   */
  async deviceMemory(signal?: AbortSignal): Promise<DeviceMemory | undefined> {
    const devices = (await this.systemStats(signal)).devices;
    const first: unknown = Array.isArray(devices) ? devices[0] : undefined;
    if (typeof first !== "object" || first === null) return undefined;
    const d = first as Record<string, unknown>;
    if (typeof d.vram_total !== "number" || typeof d.vram_free !== "number") return undefined;
    return { type: typeof d.type === "string" ? d.type : "", vramTotal: d.vram_total, vramFree: d.vram_free };
  }

  async objectInfo(signal?: AbortSignal): Promise<Record<string, ObjectInfoNode>> {
    const { status, body } = await this.call<Record<string, ObjectInfoNode>>("GET", "object_info", {
      signal,
      what: "GET /object_info",
    });
    if (status !== 200) throw new ComfyUnavailableError(`ComfyUI answered ${status} to GET /object_info`);
    return body;
  }

  /** Streams a file from ComfyUI's /view (used when ComfyUI's folders are not on this machine). */
  viewStream(ref: { filename: string; subfolder: string; type: string }, signal?: AbortSignal) {
    const searchParams = new URLSearchParams({
      filename: ref.filename,
      subfolder: ref.subfolder,
      type: ref.type,
    });
    return this.http.stream(`view?${searchParams.toString()}`, {
      ...(signal !== undefined && { signal }),
      throwHttpErrors: true,
    });
  }

  wsUrl(clientId: string): string {
    const u = new URL(this.baseUrl);
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    u.pathname = `${u.pathname.replace(/\/+$/, "")}/ws`;
    u.searchParams.set("clientId", clientId);
    return u.toString();
  }
}
