import { EventEmitter } from "node:events";
import WebSocket from "ws";
import type { Logger } from "../../lib/logger.js";
import { backoffDelay } from "../../lib/backoff.js";
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
 * Text frames are parsed and dispatched to the listeners of their `prompt_id`; binary preview frames are ignored,
 * and so is any frame that is not `{type, data: {...}}` (no listener sees it). Keys a frame carries beyond those are
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
      this.opts.logger.debug({ stage: "comfyui-ws" }, "ComfyUI WebSocket connected");
      this.emit("open");
    });
    ws.on("message", (data, isBinary) => {
      if (isBinary) return;
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

  private dispatch(event: ComfyEvent): void {
    const promptId = event.data?.prompt_id;
    if (typeof promptId !== "string") return;
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

/** A text frame the listeners can read: an object with a string `type` and an object `data` (other keys kept). */
export function isEvent(value: unknown): value is ComfyEvent {
  if (typeof value !== "object" || value === null) return false;
  const { type, data } = value as { type?: unknown; data?: unknown };
  return typeof type === "string" && typeof data === "object" && data !== null && !Array.isArray(data);
}
