import { ComfyUnavailableError, ExecutionError } from "../../lib/errors.js";
import type { ComfyClient } from "./client.js";
import type { ComfyEvents } from "./events.js";
import type { ComfyEvent, HistoryEntry, Workflow } from "./types.js";

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
  /** True when the end was learned from /history rather than the WebSocket. */
  reconciled_from_history: boolean;
}

/** What a caller following the prompt hears, read from ComfyUI's events in the one switch below. */
export type PromptEvent =
  | { type: "progress"; node: string | null; value: number; max: number }
  | { type: "executing"; node: string }
  | { type: "executed"; node: string; output: unknown }
  | { type: "cached"; nodes: string[] };

export interface RunPromptOptions {
  client: ComfyClient;
  events: ComfyEvents;
  clientId: string;
  promptId: string;
  workflow: Workflow;
  /** Aborting interrupts this prompt only (or removes it from ComfyUI's queue) and rejects with the reason. */
  signal: AbortSignal;
  /** History is polled this often while no event says the prompt ended (the WebSocket can drop or go quiet). */
  pollMs: number;
  /** ComfyUI failing to answer for this long fails the prompt as retryable. */
  unavailableAfterMs?: number;
  onEvent?: (event: PromptEvent, details: ExecutionDetails) => void;
  now?: () => number;
}

export interface PromptRun {
  history: HistoryEntry;
  details: ExecutionDetails;
}

/**
 * Runs one prompt on ComfyUI and resolves with its history entry once it has finished successfully.
 * Failure contract: validation -> InvalidWorkflowError; a node raising -> ExecutionError (with ComfyUI's error);
 * ComfyUI gone or the prompt lost by a restarted ComfyUI -> ComfyUnavailableError; abort -> the signal's reason.
 */
export async function runPrompt(opts: RunPromptOptions): Promise<PromptRun> {
  const now = opts.now ?? Date.now;
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
  };
  const waker = new Waker();
  const wake = () => waker.wake();
  let endedByEvent = false;
  const onEvent = (event: ComfyEvent) => {
    const d = event.data;
    let heard: PromptEvent | undefined;
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
    }
    if (heard) opts.onEvent?.(heard, details);
  };
  const onSocketChange = () => wake();
  const unsubscribe = opts.events.subscribe(opts.promptId, onEvent);
  opts.events.on("open", onSocketChange);
  opts.events.on("close", onSocketChange);
  const unavailableAfterMs = opts.unavailableAfterMs ?? 3_000;
  try {
    await opts.client.queuePrompt(opts.workflow, {
      clientId: opts.clientId,
      promptId: opts.promptId,
      signal: opts.signal,
    });
    let failingSince: number | undefined;
    let polls = 0;
    // History is read when an event says the prompt ended (a wake that came early is kept), or at each poll:
    // not right after queueing, which would only load ComfyUI's server while it starts the prompt.
    for (;;) {
      await waker.sleep(failingSince === undefined ? opts.pollMs : Math.min(opts.pollMs, 250), opts.signal);
      opts.signal.throwIfAborted();
      let entry: HistoryEntry | undefined;
      let lost = false;
      try {
        entry = await opts.client.history(opts.promptId, opts.signal);
        if (entry === undefined && ++polls % 5 === 0 && !(await isQueued(opts))) {
          // Not queued, not running, no history: a restarted ComfyUI lost it (or it just finished: look again).
          entry = await opts.client.history(opts.promptId, opts.signal);
          lost = entry === undefined;
        }
        failingSince = undefined;
      } catch (err) {
        // ComfyUI not answering is tolerated for a moment (a restart of its server, a slow /history).
        if (!(err instanceof ComfyUnavailableError) || opts.signal.aborted) throw err;
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
    if (opts.signal.aborted) await stopPrompt(opts);
    throw err;
  } finally {
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

async function isQueued(opts: RunPromptOptions): Promise<boolean> {
  const q = await opts.client.queue(opts.signal);
  const ids = [...q.queue_running, ...q.queue_pending].map((item) => item[1]);
  return ids.includes(opts.promptId);
}

/** Interrupts the prompt if it runs and removes it if it waits; ComfyUI being gone is fine here. */
async function stopPrompt(opts: RunPromptOptions): Promise<void> {
  const signal = AbortSignal.timeout(5_000);
  await Promise.allSettled([
    opts.client.deleteFromQueue([opts.promptId], signal),
    opts.client.interrupt(opts.promptId, signal),
  ]);
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
