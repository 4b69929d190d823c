import { ComfyUnavailableError, ExecutionError, StalledError } from "../../lib/errors.js";
import type { ComfyClient } from "./client.js";
import { PREVIEW_EVENT, type ComfyEvents } from "./events.js";
import {
  BASELINE_CAPABILITIES,
  type ComfyCapabilities,
  type ComfyEvent,
  type ComfyJob,
  type HistoryEntry,
  type NodeError,
  type Workflow,
} from "./types.js";

export interface ProgressUpdate {
  time: number;
  node: string | null;
  value: number;
  max: number;
}

/** What the WebSocket told us about one prompt; returned as `comfyui_response.execution_details`. */
export interface ExecutionDetails {
  prompt_id: string;
  /** Nodes ComfyUI ran for this prompt, in order (cached nodes are listed in cached_nodes). */
  nodes_executed: string[];
  cached_nodes: string[];
  progress_updates: ProgressUpdate[];
  current_node: string | null;
  started_at: number | null;
  completed_at: number | null;
  error: Record<string, unknown> | null;
  interrupted: boolean;
  /** True when the end was learned by asking ComfyUI (its jobs API, or /history) rather than from the WebSocket. */
  reconciled_from_history: boolean;
  /**
   * ComfyUI's validation errors of a prompt it accepted all the same ({} for most): output nodes that failed
   * validation while others passed are left out of the run. Node id -> its errors and `dependent_outputs`.
   */
  node_errors: Record<string, NodeError>;
  /** The output nodes that will produce no outputs because of `node_errors` (sorted); [] for a whole run. */
  skipped_outputs: string[];
}

/** What a caller following the prompt hears, read from ComfyUI's events in the one switch below. */
export type PromptEvent =
  | { type: "progress"; node: string | null; value: number; max: number }
  | { type: "executing"; node: string }
  | { type: "executed"; node: string; output: unknown }
  | { type: "cached"; nodes: string[] }
  /**
   * A preview image of the running node (only where `previewMethod` asked for them, or the server sends them by
   * default); `step`/`max` are the node's last progress heard, null when none was.
   */
  | {
      type: "preview";
      node: string | null;
      mime: string;
      image: Buffer;
      step: number | null;
      max: number | null;
    };

export interface RunPromptOptions {
  client: ComfyClient;
  events: ComfyEvents;
  clientId: string;
  promptId: string;
  workflow: Workflow;
  /** Aborting interrupts this prompt only (or removes it from ComfyUI's queue) and rejects with the reason. */
  signal: AbortSignal;
  /**
   * The prompt's state is asked this often while no event says it ended (the WebSocket can drop or go quiet, or a
   * message be lost): of the jobs API where the backend has it, else of /history.
   */
  pollMs: number;
  /** What the backend offers (ComfyBackend.capabilities()); without it, only the 0.3 API is used. */
  capabilities?: ComfyCapabilities;
  /** ComfyUI failing to answer for this long fails the prompt as retryable. */
  unavailableAfterMs?: number;
  /**
   * The watchdog: a prompt that runs (execution started) with no event and no progress change for this long, while
   * the WebSocket is open, is interrupted and rejects with StalledError. 0 or absent: no watchdog.
   */
  stallMs?: number;
  /** ComfyUI's preview method for this prompt (`extra_data.preview_method`); absent: no previews asked for. */
  previewMethod?: string | undefined;
  onEvent?: (event: PromptEvent, details: ExecutionDetails) => void;
  now?: () => number;
}

export interface PromptRun {
  history: HistoryEntry;
  details: ExecutionDetails;
}

/**
 * The output nodes a prompt accepted with `node_errors` leaves out (every node's `dependent_outputs`), sorted; an
 * entry without them names no output (ComfyUI lists the outputs under the node whose error they depend on).
 */
export function skippedOutputs(nodeErrors: Record<string, NodeError> | undefined): string[] {
  const skipped = new Set<string>();
  for (const error of Object.values(nodeErrors ?? {})) {
    const outputs = error?.dependent_outputs;
    if (Array.isArray(outputs)) for (const id of outputs) skipped.add(String(id));
  }
  return [...skipped].sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
}

/** What a finished job's message adds for a partial run ("" for a whole one). */
export function partialRunNote(details: Pick<ExecutionDetails, "skipped_outputs"> | undefined): string {
  const skipped = details?.skipped_outputs ?? [];
  if (skipped.length === 0) return "";
  return `; output node(s) ${skipped.join(", ")} skipped: they failed ComfyUI's validation (see execution_details.node_errors)`;
}

/**
 * Runs one prompt on ComfyUI and resolves with its history entry once it has finished successfully.
 * Failure contract: validation of every output -> InvalidWorkflowError (some outputs only: the prompt runs without
 * them, `details.skipped_outputs`); a node raising -> ExecutionError (with ComfyUI's error); ComfyUI gone or the
 * prompt lost by a restarted ComfyUI -> ComfyUnavailableError; abort -> the signal's reason, once the prompt was
 * cancelled in ComfyUI (atomically where the backend can); no event while running for `stallMs` -> StalledError,
 * once the prompt was cancelled the same way.
 */
export async function runPrompt(opts: RunPromptOptions): Promise<PromptRun> {
  const now = opts.now ?? Date.now;
  const capabilities = opts.capabilities ?? BASELINE_CAPABILITIES;
  const details: ExecutionDetails = {
    prompt_id: opts.promptId,
    nodes_executed: [],
    cached_nodes: [],
    progress_updates: [],
    current_node: null,
    started_at: null,
    completed_at: null,
    error: null,
    interrupted: false,
    reconciled_from_history: false,
    node_errors: {},
    skipped_outputs: [],
  };
  const waker = new Waker();
  const wake = () => waker.wake();
  const watchdog = new Watchdog(opts.stallMs ?? 0, () => opts.events.connected !== false);
  // Every read below follows this signal: the caller's abort, or the watchdog's.
  const signal = AbortSignal.any([opts.signal, watchdog.signal]);
  const reads: RunPromptOptions = { ...opts, signal };
  let endedByEvent = false;
  // Each node's last step, for the previews (a preview may come before its step's `progress`: `progress_state` too).
  const steps = new Map<string, { value: number; max: number }>();
  const onEvent = (event: ComfyEvent) => {
    const d = event.data;
    let heard: PromptEvent | undefined;
    watchdog.heard(event);
    switch (event.type) {
      case "execution_start":
        details.started_at = typeof d.timestamp === "number" ? d.timestamp : now();
        break;
      case "execution_cached": {
        const nodes = Array.isArray(d.nodes) ? d.nodes.map(String) : [];
        details.cached_nodes.push(...nodes);
        heard = { type: "cached", nodes };
        break;
      }
      case "executing":
        if (d.node === null || d.node === undefined) {
          endedByEvent = true;
          wake();
        } else {
          details.current_node = String(d.node);
          if (!details.nodes_executed.includes(details.current_node))
            details.nodes_executed.push(details.current_node);
          heard = { type: "executing", node: details.current_node };
        }
        break;
      case "executed":
        heard = { type: "executed", node: String(d.node), output: d.output };
        break;
      case "progress": {
        const update = {
          time: now(),
          node: d.node === undefined || d.node === null ? null : String(d.node),
          value: Number(d.value),
          max: Number(d.max),
        };
        details.progress_updates.push(update);
        if (update.node !== null) steps.set(update.node, { value: update.value, max: update.max });
        heard = { type: "progress", node: update.node, value: update.value, max: update.max };
        break;
      }
      case "execution_error":
        details.error = { ...d };
        wake();
        break;
      case "execution_interrupted":
        details.interrupted = true;
        wake();
        break;
      case "execution_success":
        wake();
        break;
      case "progress_state":
        if (typeof d.nodes === "object" && d.nodes !== null) {
          for (const [node, state] of Object.entries(
            d.nodes as Record<string, { value?: unknown; max?: unknown }>,
          ))
            if (typeof state?.value === "number" && typeof state.max === "number")
              steps.set(node, { value: state.value, max: state.max });
        }
        break;
      case PREVIEW_EVENT: {
        const node = typeof d.node === "string" ? d.node : details.current_node;
        const step = node === null ? undefined : steps.get(node);
        if (Buffer.isBuffer(d.image) && typeof d.mime === "string")
          heard = {
            type: "preview",
            node,
            mime: d.mime,
            image: d.image,
            step: step?.value ?? null,
            max: step?.max ?? null,
          };
        break;
      }
    }
    if (heard) opts.onEvent?.(heard, details);
  };
  const onSocketChange = () => {
    // Events are not heard while the socket is down: the watchdog waits for it (the polls still read the end).
    watchdog.rearm();
    wake();
  };
  const unsubscribe = opts.events.subscribe(opts.promptId, onEvent);
  opts.events.on("open", onSocketChange);
  opts.events.on("close", onSocketChange);
  const unavailableAfterMs = opts.unavailableAfterMs ?? 3_000;
  try {
    const queued = await opts.client.queuePrompt(opts.workflow, {
      clientId: opts.clientId,
      promptId: opts.promptId,
      signal,
      previewMethod: opts.previewMethod,
    });
    const nodeErrors = queued.node_errors;
    if (typeof nodeErrors === "object" && nodeErrors !== null && Object.keys(nodeErrors).length > 0) {
      details.node_errors = nodeErrors;
      details.skipped_outputs = skippedOutputs(nodeErrors);
    }
    const readEnd = capabilities.jobsApi
      ? () => endFromJobs(reads, () => watchdog.running())
      : endFromHistory(reads);
    let failingSince: number | undefined;
    // The state is read when an event says the prompt ended (a wake that came early is kept), or at each poll:
    // not right after queueing, which would only load ComfyUI's server while it starts the prompt.
    for (;;) {
      await waker.sleep(failingSince === undefined ? opts.pollMs : Math.min(opts.pollMs, 250), signal);
      signal.throwIfAborted();
      let entry: HistoryEntry | undefined;
      let lost = false;
      try {
        const end = await readEnd();
        lost = end === LOST;
        if (end !== LOST) entry = end;
        failingSince = undefined;
      } catch (err) {
        // ComfyUI not answering is tolerated for a moment (a restart of its server, a slow /history).
        if (!(err instanceof ComfyUnavailableError) || signal.aborted) throw err;
        failingSince ??= now();
        if (now() - failingSince >= unavailableAfterMs) throw err;
      }
      if (lost) throw new ComfyUnavailableError("ComfyUI lost the prompt (it restarted while the job ran)");
      if (entry !== undefined) {
        details.completed_at = now();
        details.current_node = null;
        if (!endedByEvent) details.reconciled_from_history = true;
        return finish(entry, details);
      }
    }
  } catch (err) {
    if (signal.aborted) await stopPrompt(opts, capabilities);
    if (watchdog.signal.aborted && !opts.signal.aborted) {
      const stalled = watchdog.signal.reason as StalledError;
      throw new StalledError(stalled.message, { execution_details: details });
    }
    throw err;
  } finally {
    watchdog.stop();
    unsubscribe();
    opts.events.off("open", onSocketChange);
    opts.events.off("close", onSocketChange);
  }
}

function finish(entry: HistoryEntry, details: ExecutionDetails): PromptRun {
  const status = entry.status;
  if (status && status.status_str !== "success") {
    for (const [type, data] of status.messages ?? []) {
      if (type === "execution_error" && details.error === null) details.error = { ...data };
      if (type === "execution_interrupted") details.interrupted = true;
    }
    const e = details.error;
    const message = details.interrupted
      ? "ComfyUI interrupted the prompt"
      : `ComfyUI failed at node ${String(e?.node_id ?? "?")} (${String(e?.node_type ?? "?")}): ${String(
          e?.exception_message ?? status.status_str,
        ).trim()}`;
    throw new ExecutionError(message, { execution_details: details, comfyui_response: entry });
  }
  return { history: entry, details };
}

/** A prompt ComfyUI no longer knows (neither queued, running nor finished): a restarted ComfyUI lost it. */
const LOST = Symbol("lost");
type End = HistoryEntry | undefined | typeof LOST;

/** Job states after which ComfyUI's history holds the prompt. */
const FINISHED_JOB_STATES: ReadonlySet<string> = new Set(["completed", "failed", "cancelled"]);

/**
 * The prompt's end, from the jobs API: one call says queued, running or finished, and an unknown id is a lost
 * prompt at once. A finished prompt's entry is then read from /history, the shape every version shares (the jobs
 * API rewrites some outputs); the job's own copy stands in if the entry is gone meanwhile.
 */
async function endFromJobs(opts: RunPromptOptions, onRunning: () => void): Promise<End> {
  const job = await opts.client.job(opts.promptId, opts.signal);
  if (job === undefined) return (await opts.client.history(opts.promptId, opts.signal)) ?? LOST;
  if (job.status === "in_progress") onRunning();
  if (job.status === "pending" || job.status === "in_progress") return undefined;
  const entry = await opts.client.history(opts.promptId, opts.signal);
  if (entry !== undefined) return entry;
  return FINISHED_JOB_STATES.has(job.status) ? entryFromJob(job) : undefined;
}

/** A finished job as a history entry: its outputs, and its status (or one made from its state). */
function entryFromJob(job: ComfyJob): HistoryEntry {
  const messages: [string, Record<string, unknown>][] = job.execution_error
    ? [["execution_error", job.execution_error]]
    : job.status === "cancelled"
      ? [["execution_interrupted", { prompt_id: job.id }]]
      : [];
  return {
    prompt: [],
    outputs: job.outputs ?? {},
    status: job.execution_status ?? {
      status_str: job.status === "completed" ? "success" : "error",
      completed: job.status === "completed",
      messages,
    },
  };
}

/**
 * The prompt's end, from /history (ComfyUI without the jobs API): an entry once it finished; every fifth read
 * without one, /queue says whether it is still there.
 */
function endFromHistory(opts: RunPromptOptions): () => Promise<End> {
  let polls = 0;
  return async () => {
    const entry = await opts.client.history(opts.promptId, opts.signal);
    if (entry !== undefined || ++polls % 5 !== 0 || (await isQueued(opts))) return entry;
    // Not queued, not running, no history: a restarted ComfyUI lost it (or it just finished: look again).
    return (await opts.client.history(opts.promptId, opts.signal)) ?? LOST;
  };
}

async function isQueued(opts: RunPromptOptions): Promise<boolean> {
  const q = await opts.client.queue(opts.signal);
  const ids = [...q.queue_running, ...q.queue_pending].map((item) => item[1]);
  return ids.includes(opts.promptId);
}

/**
 * Interrupts the prompt if it runs and removes it if it waits; ComfyUI being gone is fine here. Where the backend
 * has the atomic cancel route, that alone: ComfyUI checks and interrupts under its queue's lock. Without it, the
 * prompt may end between the check /interrupt makes and its interrupt, and the interrupt hit the next prompt.
 */
async function stopPrompt(opts: RunPromptOptions, capabilities: ComfyCapabilities): Promise<void> {
  const signal = AbortSignal.timeout(5_000);
  if (capabilities.atomicCancel) {
    await opts.client.cancelJob(opts.promptId, signal).catch(() => undefined);
    return;
  }
  await Promise.allSettled([
    opts.client.deleteFromQueue([opts.promptId], signal),
    opts.client.interrupt(opts.promptId, signal),
  ]);
}

/** Events that say the prompt works on: any of its events except a progress (or progress state) unchanged. */
function progressKey(event: ComfyEvent): string | undefined {
  const d = event.data;
  if (event.type === "progress") return `${String(d.node)}:${String(d.value)}/${String(d.max)}`;
  if (event.type === "progress_state") return JSON.stringify(d.nodes ?? null);
  return undefined;
}

/**
 * A running prompt's watchdog: armed once the prompt runs (its first event, or the jobs API saying so), re-armed by
 * every event that shows work, held while the WebSocket is down (nothing could be heard then); when it fires, its
 * signal aborts with a StalledError. A queued prompt waiting behind another is not watched: it is not running.
 */
class Watchdog {
  private readonly controller = new AbortController();
  private timer: NodeJS.Timeout | undefined;
  private started = false;
  private lastProgress: string | undefined;

  constructor(
    private readonly ms: number,
    private readonly listening: () => boolean,
  ) {}

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  heard(event: ComfyEvent): void {
    const key = progressKey(event);
    if (key !== undefined) {
      if (key === this.lastProgress) return;
      this.lastProgress = key;
    }
    this.started = true;
    this.rearm();
  }

  /** The jobs API says the prompt runs: watched from now on, if no event said so already. */
  running(): void {
    if (this.started) return;
    this.started = true;
    this.rearm();
  }

  rearm(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (!(this.ms > 0) || !this.started || this.controller.signal.aborted || !this.listening()) return;
    this.timer = setTimeout(() => {
      const s = Math.round(this.ms / 100) / 10;
      this.controller.abort(
        new StalledError(`the prompt stalled: no execution event or progress for ${s} s while it ran`),
      );
    }, this.ms);
    this.timer.unref();
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}

/**
 * Sleeps until woken, a timeout or an abort. A wake that comes while nobody sleeps (an event arriving during a
 * history request) is kept, so the next sleep returns at once instead of waiting for the poll.
 */
class Waker {
  private pending = false;
  private resolve: (() => void) | undefined;

  wake(): void {
    if (this.resolve) this.resolve();
    else this.pending = true;
  }

  sleep(ms: number, signal: AbortSignal): Promise<void> {
    if (this.pending || signal.aborted) {
      this.pending = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        this.resolve = undefined;
        this.pending = false;
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.addEventListener("abort", done, { once: true });
      this.resolve = done;
    });
  }
}
