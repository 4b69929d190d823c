import { createHmac, randomUUID } from "node:crypto";
import { got, type Got } from "got";
import nacl from "tweetnacl";
import type { Logger } from "../lib/logger.js";
import { backoffDelay, delay } from "../lib/backoff.js";

export interface WebhookSigning {
  /** Standard Webhooks symmetric secret (`whsec_<base64>` or raw text): `v1,<HMAC-SHA256>`. */
  secret?: string | undefined;
  /** Ed25519 key, base64 of a 32-byte seed or a 64-byte secret key: `v1a,<signature>`. */
  signingKey?: string | undefined;
}

export interface WebhookDelivery {
  url: string;
  body: unknown;
  signing: WebhookSigning;
  requestId: string;
}

export interface WebhookOptions {
  timeoutMs: number;
  maxAttempts: number;
  logger: Logger;
  baseDelayMs?: number;
  maxDelayMs?: number;
  onAttempt?: (outcome: "delivered" | "failed" | "retry") => void;
  now?: () => number;
}

/** Standard Webhooks: the signed content is `${id}.${timestamp}.${body}`. */
export function signatureHeaders(id: string, timestamp: number, body: string, signing: WebhookSigning) {
  const content = `${id}.${timestamp}.${body}`;
  const signatures: string[] = [];
  if (signing.secret) {
    const key = signing.secret.startsWith("whsec_")
      ? Buffer.from(signing.secret.slice("whsec_".length), "base64")
      : Buffer.from(signing.secret, "utf8");
    signatures.push(`v1,${createHmac("sha256", key).update(content).digest("base64")}`);
  }
  if (signing.signingKey) {
    const raw = Buffer.from(signing.signingKey.replace(/^whsk_/, ""), "base64");
    const secretKey = raw.length === 32 ? nacl.sign.keyPair.fromSeed(raw).secretKey : raw;
    if (secretKey.length !== 64) throw new Error("WEBHOOK_SIGNING_KEY must be base64 of 32 or 64 bytes");
    const sig = nacl.sign.detached(Buffer.from(content, "utf8"), secretKey);
    signatures.push(`v1a,${Buffer.from(sig).toString("base64")}`);
  }
  const headers: Record<string, string> = { "webhook-id": id, "webhook-timestamp": String(timestamp) };
  if (signatures.length > 0) headers["webhook-signature"] = signatures.join(" ");
  return headers;
}

/**
 * Delivers webhooks off the request path: `send` returns at once; delivery retries with capped, jittered backoff
 * on network errors, 5xx, 408 and 429, and gives up on any other 4xx. Each attempt has a deadline. Failures are
 * logged and counted, never thrown at the caller. `drain` waits for deliveries in flight (for shutdown).
 */
export class WebhookSender {
  private readonly http: Got;
  private readonly inFlight = new Set<Promise<void>>();
  private readonly stopping = new AbortController();

  constructor(private readonly opts: WebhookOptions) {
    this.http = got.extend({
      timeout: { request: opts.timeoutMs },
      retry: { limit: 0 },
      throwHttpErrors: false,
    });
  }

  send(delivery: WebhookDelivery): Promise<void> {
    const p = this.deliver(delivery).finally(() => this.inFlight.delete(p));
    this.inFlight.add(p);
    return p;
  }

  private async deliver(d: WebhookDelivery): Promise<void> {
    const body = JSON.stringify(d.body);
    const id = `msg_${randomUUID()}`;
    const log = this.opts.logger.child({ request_id: d.requestId, stage: "webhook" });
    for (let attempt = 1; attempt <= this.opts.maxAttempts; attempt++) {
      const started = Date.now();
      let retry: boolean;
      let why: string;
      try {
        const timestamp = Math.floor((this.opts.now ?? Date.now)() / 1000);
        const res = await this.http.post(d.url, {
          body,
          headers: {
            "content-type": "application/json",
            ...signatureHeaders(id, timestamp, body, d.signing),
          },
          signal: this.stopping.signal,
        });
        if (res.statusCode >= 200 && res.statusCode < 300) {
          this.opts.onAttempt?.("delivered");
          log.info(
            { attempt, status: res.statusCode, duration_ms: Date.now() - started },
            "webhook delivered",
          );
          return;
        }
        retry = res.statusCode >= 500 || res.statusCode === 408 || res.statusCode === 429;
        why = `answered ${res.statusCode}`;
      } catch (err) {
        if (this.stopping.signal.aborted) return;
        retry = true;
        why = err instanceof Error ? err.message : String(err);
      }
      const last = !retry || attempt === this.opts.maxAttempts;
      this.opts.onAttempt?.(last ? "failed" : "retry");
      log.warn(
        { attempt, duration_ms: Date.now() - started, url: d.url },
        `webhook ${why}${last ? "; giving up" : "; retrying"}`,
      );
      if (last) return;
      try {
        await delay(
          backoffDelay(attempt, this.opts.baseDelayMs ?? 500, this.opts.maxDelayMs ?? 30_000),
          this.stopping.signal,
        );
      } catch {
        return;
      }
    }
  }

  /** Waits up to `timeoutMs` for deliveries in flight, then abandons the rest. */
  async drain(timeoutMs: number): Promise<void> {
    const timer = setTimeout(() => this.stopping.abort(), timeoutMs);
    await Promise.allSettled([...this.inFlight]);
    clearTimeout(timer);
    this.stopping.abort();
  }
}
