/**
 * In-memory stand-ins for what the unit tests must not reach (ComfyUI, S3), each at the narrowest interface its
 * user reads. Every one is named as a fake; nothing here opens a socket.
 */
import { EventEmitter } from "node:events";
import type { ComfyClient } from "../../handlers/comfyui/client.js";
import type { ComfyEvents } from "../../handlers/comfyui/events.js";
import {
  BASELINE_CAPABILITIES,
  type ComfyCapabilities,
  type ComfyEvent,
  type ComfyJob,
  type HistoryEntry,
  type Workflow,
} from "../../handlers/comfyui/types.js";
import type { ObjectStorage, ResolvedS3 } from "../../handlers/storage/s3.js";
import { createLogger, type Logger } from "../../lib/logger.js";

export const silentLogger = (): Logger => createLogger({ level: "silent", pretty: false });

/** A successful prompt's history entry, with `outputs` as given. */
export function successEntry(outputs: HistoryEntry["outputs"] = {}): HistoryEntry {
  return { prompt: [], outputs, status: { status_str: "success", completed: true, messages: [] } };
}

/** ComfyUI's WebSocket as runPrompt reads it: per-prompt listeners, and "open"/"close" of the socket. */
export class FakeComfyEvents extends EventEmitter {
  private readonly byPrompt = new Map<string, Set<(event: ComfyEvent) => void>>();

  subscribe(promptId: string, listener: (event: ComfyEvent) => void): () => void {
    let set = this.byPrompt.get(promptId);
    if (!set) this.byPrompt.set(promptId, (set = new Set()));
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0) this.byPrompt.delete(promptId);
    };
  }

  /** Delivers one event of `promptId` to its listeners, as ComfyEvents dispatches a text frame. */
  send(promptId: string, type: string, data: Record<string, unknown> = {}): void {
    for (const listener of this.byPrompt.get(promptId) ?? [])
      listener({ type, data: { ...data, prompt_id: promptId } });
  }

  /** Prompts someone listens to now (a finished runPrompt must have unsubscribed). */
  listened(): string[] {
    return [...this.byPrompt.keys()];
  }

  asEvents(): ComfyEvents {
    return this as unknown as ComfyEvents;
  }
}

/**
 * ComfyUI's HTTP API as runPrompt, the job runner and the pool read it. A queued prompt is in the queue until the
 * test finishes it (`finish`), and /history answers for it from then on. `onQueue` runs after each /prompt (the test
 * plays ComfyUI there: events, a finish, a failure); `failQueue` makes the next /prompt reject. `offers` is what it
 * offers beyond the 0.3 API (none unless a test says so: the jobs API, atomic cancel); `nodeErrors` what /prompt
 * answers a partial run with.
 */
export class FakeComfyClient {
  readonly queued: { promptId: string; workflow: Workflow }[] = [];
  readonly interrupted: string[] = [];
  readonly deleted: string[] = [];
  /** Prompts cancelled through the atomic cancel route. */
  readonly cancelled: string[] = [];
  /** Prompts whose history entry was deleted. */
  readonly historyDeleted: string[] = [];
  offers: ComfyCapabilities = BASELINE_CAPABILITIES;
  nodeErrors: Record<string, unknown> = {};
  freed = 0;
  historyCalls = 0;
  jobCalls = 0;
  private readonly histories = new Map<string, HistoryEntry>();
  private readonly running = new Set<string>();
  onQueue: ((promptId: string) => void) | undefined;
  failQueue: unknown[] = [];

  finish(promptId: string, entry: HistoryEntry = successEntry()): void {
    this.running.delete(promptId);
    this.histories.set(promptId, entry);
  }

  /** A restarted ComfyUI: the prompt is neither queued nor in its history. */
  forget(promptId: string): void {
    this.running.delete(promptId);
  }

  readonly queuePrompt = async (
    workflow: Workflow,
    opts: { clientId: string; promptId: string; signal?: AbortSignal | undefined },
  ) => {
    const failure = this.failQueue.shift();
    if (failure !== undefined) throw failure;
    this.queued.push({ promptId: opts.promptId, workflow });
    this.running.add(opts.promptId);
    this.onQueue?.(opts.promptId);
    return { prompt_id: opts.promptId, number: this.queued.length, node_errors: this.nodeErrors };
  };

  readonly capabilities = async (): Promise<ComfyCapabilities> => this.offers;

  /** The jobs API: in_progress while queued, the history entry's state once finished, unknown otherwise. */
  readonly job = async (promptId: string): Promise<ComfyJob | undefined> => {
    this.jobCalls++;
    const entry = this.histories.get(promptId);
    if (entry !== undefined) {
      const status = entry.status?.status_str === "success" ? "completed" : "failed";
      return {
        id: promptId,
        status,
        outputs: entry.outputs,
        ...(entry.status && { execution_status: entry.status }),
      };
    }
    return this.running.has(promptId) ? { id: promptId, status: "in_progress" } : undefined;
  };

  readonly cancelJob = async (promptId: string): Promise<boolean> => {
    this.cancelled.push(promptId);
    return this.running.delete(promptId);
  };

  readonly deleteHistory = async (promptIds: string[]): Promise<void> => {
    for (const id of promptIds) this.histories.delete(id);
    this.historyDeleted.push(...promptIds);
  };

  readonly history = async (promptId: string): Promise<HistoryEntry | undefined> => {
    this.historyCalls++;
    return this.histories.get(promptId);
  };

  readonly queue = async () => ({
    queue_running: [...this.running].map((id, i) => [i, id]),
    queue_pending: [] as unknown[][],
  });

  readonly interrupt = async (promptId: string) => {
    this.interrupted.push(promptId);
  };

  readonly deleteFromQueue = async (promptIds: string[]) => {
    this.deleted.push(...promptIds);
  };

  readonly free = async () => {
    this.freed++;
  };

  asClient(): ComfyClient {
    return this as unknown as ComfyClient;
  }
}

/** The operator's bucket as SharedJobs and the job runner use it: small documents by key, conditional creates. */
export class FakeObjectStorage {
  readonly objects = new Map<string, string>();
  /** Files "uploaded" (key → local path). */
  readonly uploads = new Map<string, string>();
  /** While set, every call rejects with it (a bucket that cannot be reached). */
  down: Error | undefined;

  private check(): void {
    if (this.down) throw this.down;
  }

  readonly putDocument = async (
    _target: ResolvedS3,
    key: string,
    body: string,
    opts: { ifAbsent?: boolean; signal?: AbortSignal } = {},
  ): Promise<boolean> => {
    this.check();
    if (opts.ifAbsent && this.objects.has(key)) return false;
    this.objects.set(key, body);
    return true;
  };

  readonly getDocument = async (_target: ResolvedS3, key: string): Promise<string | undefined> => {
    this.check();
    return this.objects.get(key);
  };

  readonly exists = async (_target: ResolvedS3, key: string): Promise<boolean> => {
    this.check();
    return this.objects.has(key);
  };

  readonly put = async (_target: ResolvedS3, key: string, path: string) => {
    this.check();
    this.uploads.set(key, path);
    return { url: `https://bucket.invalid/${key}`, bytes: 1 };
  };

  asStorage(): ObjectStorage {
    return this as unknown as ObjectStorage;
  }
}

export const FAKE_BUCKET: ResolvedS3 = {
  accessKeyId: "fake",
  secretAccessKey: "fake",
  endpointUrl: "https://bucket.invalid",
  bucketName: "jobs",
  region: "us-east-1",
};

/** A clock the test moves by hand. */
export function fakeClock(start = 1_700_000_000_000) {
  let t = start;
  return {
    now: () => t,
    advance: (ms: number) => void (t += ms),
  };
}
