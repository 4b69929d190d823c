import { EventEmitter } from "node:events";
import WebSocket from "ws";
import type { Logger } from "../../lib/logger.js";
import { backoffDelay } from "../../lib/backoff.js";
import { PREVIEW_FEATURE_FLAGS, parsePreviewFrame } from "./previews.js";
import type { ComfyEvent } from "./types.js";

export interface ComfyEventsOptions {
  url: string;
  logger: Logger;
  /** Reconnect backoff. */
  baseDelayMs?: number;
  maxDelayMs?: number;
}

/**
 * One WebSocket to ComfyUI for the whole worker (one client id), reconnecting with capped, jittered backoff.
 * Text frames are parsed and dispatched to the listeners of their `prompt_id`, and so are binary preview frames, as
 * events of type PREVIEW_EVENT (`data`: `prompt_id`, `node` where the frame names it, `mime`, `image` a Buffer): a
 * frame with metadata names its prompt, an old-form one (no ids) goes to the prompt running on this ComfyUI. Any
 * other frame, and any text frame that is not `{type, data: {...}}`, is skipped (no listener sees it). The first
 * message sent announces `supports_preview_metadata` (ComfyUI's feature_flags handshake, answered in kind by the
 * versions that have it, ignored by older ones). Keys a frame carries beyond those are
 * kept: newer ComfyUIs add some (asset ids in `executed`), and no check here refuses them.
 * Emits "open" and "close" so that callers can reconcile from /history after a gap. A listener that throws is
 * logged and never breaks the loop.
 */
export class ComfyEvents extends EventEmitter {
  private ws: WebSocket | undefined;
  private readonly byPrompt = new Map<string, Set<(event: ComfyEvent) => void>>();
  private attempt = 0;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private closed = false;
  /** The prompt this ComfyUI runs, as its events tell: where a preview frame without ids belongs. */
  private runningPrompt: string | undefined;
  connected = false;

  constructor(private readonly opts: ComfyEventsOptions) {
    super();
  }

  start(): void {
    this.closed = false;
    this.connect();
  }

  private connect(): void {
    if (this.closed) return;
    const ws = new WebSocket(this.opts.url, { handshakeTimeout: 10_000, perMessageDeflate: false });
    this.ws = ws;
    ws.on("open", () => {
      this.attempt = 0;
      this.connected = true;
      this.runningPrompt = undefined;
      ws.send(JSON.stringify({ type: "feature_flags", data: PREVIEW_FEATURE_FLAGS }), () => undefined);
      this.opts.logger.debug({ stage: "comfyui-ws" }, "ComfyUI WebSocket connected");
      this.emit("open");
    });
    ws.on("message", (data, isBinary) => {
      if (isBinary) return this.onBinary(data);
      let event: unknown;
      try {
        event = JSON.parse(data.toString());
      } catch {
        return;
      }
      if (isEvent(event)) this.dispatch(event);
    });
    ws.on("error", (err) => {
      this.opts.logger.debug({ stage: "comfyui-ws", err: err.message }, "ComfyUI WebSocket error");
    });
    ws.on("close", () => {
      const wasConnected = this.connected;
      this.connected = false;
      ws.removeAllListeners();
      if (this.ws === ws) this.ws = undefined;
      if (wasConnected) {
        this.opts.logger.warn({ stage: "comfyui-ws" }, "ComfyUI WebSocket closed; reconnecting");
        this.emit("close");
      }
      if (this.closed) return;
      const wait = backoffDelay(this.attempt++, this.opts.baseDelayMs ?? 250, this.opts.maxDelayMs ?? 5_000);
      this.reconnectTimer = setTimeout(() => this.connect(), wait);
    });
  }

  private onBinary(data: WebSocket.RawData): void {
    if (this.byPrompt.size === 0) return;
    const bytes = Buffer.isBuffer(data)
      ? data
      : Array.isArray(data)
        ? Buffer.concat(data)
        : Buffer.from(data);
    const frame = parsePreviewFrame(bytes);
    const promptId = frame?.promptId ?? this.runningPrompt;
    if (!frame || promptId === undefined) return;
    const { mime, image, node } = frame;
    this.dispatch({ type: PREVIEW_EVENT, data: { prompt_id: promptId, mime, image, ...(node && { node }) } });
  }

  private dispatch(event: ComfyEvent): void {
    const promptId = event.data?.prompt_id;
    if (typeof promptId !== "string") return;
    this.trackRunning(event.type, promptId, event.data.node);
    const listeners = this.byPrompt.get(promptId);
    if (!listeners) return;
    for (const listener of listeners) {
      try {
        listener(event);
      } catch (err) {
        this.opts.logger.error({ stage: "comfyui-ws", err, promptId }, "a ComfyUI event listener failed");
      }
    }
  }

  private trackRunning(type: string, promptId: string, node: unknown): void {
    if (type === "execution_start" || type === "progress" || (type === "executing" && node != null))
      this.runningPrompt = promptId;
    else if (
      (type === "executing" ||
        type === "execution_success" ||
        type === "execution_error" ||
        type === "execution_interrupted") &&
      this.runningPrompt === promptId
    )
      this.runningPrompt = undefined;
  }

  /** Listens to one prompt's events; call the returned function to stop. */
  subscribe(promptId: string, listener: (event: ComfyEvent) => void): () => void {
    let set = this.byPrompt.get(promptId);
    if (!set) this.byPrompt.set(promptId, (set = new Set()));
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0) this.byPrompt.delete(promptId);
    };
  }

  /** Drops the connection now (for example after ComfyUI restarted); it reconnects by itself. */
  reconnect(): void {
    this.ws?.terminate();
  }

  stop(): void {
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    const ws = this.ws;
    this.ws = undefined;
    if (ws) {
      ws.removeAllListeners();
      ws.on("error", () => undefined);
      ws.terminate();
    }
    this.connected = false;
  }
}

/** The type of the event a binary preview frame is dispatched as (no text message of ComfyUI's has a colon). */
export const PREVIEW_EVENT = "binary:preview";

/** A text frame the listeners can read: an object with a string `type` and an object `data` (other keys kept). */
export function isEvent(value: unknown): value is ComfyEvent {
  if (typeof value !== "object" || value === null) return false;
  const { type, data } = value as { type?: unknown; data?: unknown };
  return typeof type === "string" && typeof data === "object" && data !== null && !Array.isArray(data);
}
