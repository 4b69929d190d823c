import { got, type Got } from "got";
import type { Logger } from "../lib/logger.js";
import { CallbackAddressError, callbackGuards } from "./preprocess/address-policy.js";
import { postForStatus } from "./webhook.js";

export interface ClosingSession {
  id: string;
  onCloseRoute: string | null;
  onClosePayload: unknown;
}

export interface SessionCloseOptions {
  /** Whether private and loopback addresses may be called (WEBHOOK_ALLOW_PRIVATE, as for webhooks). */
  allowPrivate: boolean;
  /** Upstream bounds the call to 10 s. */
  timeoutMs?: number;
  logger: Logger;
}

export type SessionCloseOutcome = "delivered" | "failed" | "refused" | "skipped";

/**
 * Upstream's session callback: when a session ends (`/session/end` or expiry), its `on_close_payload` is POSTed
 * to its `on_close_route`, with `session_id` added (a payload that is not an object goes under `payload`), once,
 * bounded in time. The URL is the caller's: it goes through the webhook address policy, checked on the address
 * actually connected to. Failure contract: never throws; the outcome is logged and returned.
 */
export class SessionCloseNotifier {
  private readonly http: Got;

  constructor(private readonly opts: SessionCloseOptions) {
    this.http = got.extend({
      timeout: { request: opts.timeoutMs ?? 10_000 },
      retry: { limit: 0 },
      followRedirect: false,
      throwHttpErrors: false,
      // The webhook address policy, checked on the address actually connected to (DNS included).
      ...callbackGuards(opts.allowPrivate),
    });
  }

  async notify(session: ClosingSession): Promise<SessionCloseOutcome> {
    const log = this.opts.logger.child({ stage: "session", session_id: session.id });
    const route = session.onCloseRoute;
    if (!route) return "skipped";
    let url: URL;
    try {
      url = new URL(route);
      if (url.protocol !== "http:" && url.protocol !== "https:") throw new Error("not http(s)");
    } catch {
      // Upstream posts a bare route to its model server; this worker is its own model server and has no such
      // routes, so only absolute http(s) URLs are called.
      log.warn({ on_close_route: route }, "on_close_route is not an http(s) URL: not called");
      return "skipped";
    }
    const host = url.host;
    const payload = session.onClosePayload;
    const body: Record<string, unknown> =
      payload && typeof payload === "object" && !Array.isArray(payload)
        ? { ...(payload as Record<string, unknown>) }
        : payload === null || payload === undefined
          ? {}
          : { payload };
    body.session_id ??= session.id;
    const started = Date.now();
    try {
      // Only the status is read: the receiver's body is dropped unread (an endless one would hold the call).
      const status = await postForStatus(this.http, url, {
        body: JSON.stringify(body),
        headers: { "content-type": "application/json" },
      });
      const ok = status < 400;
      log[ok ? "info" : "warn"](
        { status, duration_ms: Date.now() - started },
        `on_close_route answered ${status}`,
      );
      return ok ? "delivered" : "failed";
    } catch (err) {
      const cause = (err as { cause?: unknown }).cause;
      if (err instanceof CallbackAddressError || cause instanceof CallbackAddressError) {
        log.warn({ host }, `on_close_route refused: ${(cause as Error | undefined)?.message ?? String(err)}`);
        return "refused";
      }
      log.warn(
        { duration_ms: Date.now() - started },
        `on_close_route failed: ${err instanceof Error ? err.message : String(err)}`,
      );
      return "failed";
    }
  }
}
