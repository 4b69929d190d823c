import { createHmac, randomUUID } from "node:crypto";
import { got, type Got } from "got";
import nacl from "tweetnacl";
import type { Logger } from "../lib/logger.js";
import { backoffDelay } from "../lib/backoff.js";
import { retry } from "../lib/retry.js";
import { redactUrl } from "../lib/redact.js";
import { CallbackAddressError, callbackGuards, checkCallbackUrl } from "./preprocess/address-policy.js";

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
  /** A URL the caller chose (not the operator's WEBHOOK_URL): the address policy applies at connect time. */
  callerChosen?: boolean;
}

export interface WebhookOptions {
  timeoutMs: number;
  maxAttempts: number;
  /** WEBHOOK_ALLOW_PRIVATE: caller-chosen URLs may reach private and loopback addresses. */
  allowPrivate?: boolean;
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
/**
 * The one check of a caller-chosen callback URL (a request's webhook.url, a session's on_close_route) at
 * submission: throws a 400 error (CallbackAddressError) when the address policy refuses it. Deliveries made with
 * `callerChosen: true` are checked again at connect time (DNS, redirects).
 */
export function validateCallbackUrl(url: string, allowPrivate: boolean, field = "webhook.url"): void {
  checkCallbackUrl(url, allowPrivate, field);
}

/** One attempt's failure, and whether another attempt may help (network errors, 5xx, 408, 429). */
class DeliveryFailure extends Error {
  override readonly name = "DeliveryFailure";
  constructor(
    message: string,
    readonly retryable: boolean,
  ) {
    super(message);
  }
}

export class WebhookSender {
  private readonly http: Got;
  /** For caller-chosen URLs: the address policy enforced on the address connected to. */
  private readonly guarded: Got;
  private readonly inFlight = new Set<Promise<void>>();
  private readonly stopping = new AbortController();

  constructor(private readonly opts: WebhookOptions) {
    this.http = got.extend({
      timeout: { request: opts.timeoutMs },
      retry: { limit: 0 },
      throwHttpErrors: false,
    });
    this.guarded = this.http.extend(callbackGuards(opts.allowPrivate ?? false) as object);
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
    const http = d.callerChosen ? this.guarded : this.http;
    let started = 0;
    const attempt = async (n: number): Promise<void> => {
      started = Date.now();
      let status: number;
      try {
        const timestamp = Math.floor((this.opts.now ?? Date.now)() / 1000);
        const res = await http.post(d.url, {
          body,
          headers: {
            "content-type": "application/json",
            ...signatureHeaders(id, timestamp, body, d.signing),
          },
          signal: this.stopping.signal,
        });
        status = res.statusCode;
      } catch (err) {
        if (this.stopping.signal.aborted) throw err;
        const cause = (err as { cause?: unknown }).cause;
        const refused =
          err instanceof CallbackAddressError
            ? err
            : cause instanceof CallbackAddressError
              ? cause
              : undefined;
        // A refused address stays refused: no point retrying.
        if (refused) throw new DeliveryFailure(`refused: ${refused.message}`, false);
        throw new DeliveryFailure(err instanceof Error ? err.message : String(err), true);
      }
      if (status < 200 || status >= 300) {
        throw new DeliveryFailure(`answered ${status}`, status >= 500 || status === 408 || status === 429);
      }
      this.opts.onAttempt?.("delivered");
      log.info({ attempt: n, status, duration_ms: Date.now() - started }, "webhook delivered");
    };
    await retry(attempt, {
      attempts: this.opts.maxAttempts,
      delayMs: (n) => backoffDelay(n, this.opts.baseDelayMs ?? 500, this.opts.maxDelayMs ?? 30_000),
      signal: this.stopping.signal,
      retryable: (err) => err instanceof DeliveryFailure && err.retryable,
      onFailure: (err, n, willRetry) => {
        if (this.stopping.signal.aborted) return; // shutdown abandons deliveries quietly
        this.opts.onAttempt?.(willRetry ? "retry" : "failed");
        const why = err instanceof Error ? err.message : String(err);
        log.warn(
          { attempt: n, duration_ms: Date.now() - started, url: redactUrl(d.url) },
          // An error message may quote the URL: only its scheme, host and port reach the log.
          `webhook ${why.split(d.url).join(redactUrl(d.url) ?? "")}${willRetry ? "; retrying" : "; giving up"}`,
        );
      },
    }).catch(() => undefined); // logged and counted above: a delivery never fails its job
  }

  /** Waits up to `timeoutMs` for deliveries in flight, then abandons the rest. */
  async drain(timeoutMs: number): Promise<void> {
    const timer = setTimeout(() => this.stopping.abort(), timeoutMs);
    await Promise.allSettled([...this.inFlight]);
    clearTimeout(timer);
    this.stopping.abort();
  }
}
