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

/**
 * Where a delivery goes decides what may sign it: the operator's keys sign only what goes to the operator's own
 * WEBHOOK_URL. A signed body names no destination, so one the operator signed for a caller's host could be replayed
 * to the operator's receiver, where it verifies; a caller-chosen URL carries at most the caller's own secret.
 */
export type WebhookDestination =
  | { kind: "operator"; url: string; signing: WebhookSigning }
  /** A URL the caller chose: the address policy applies at connect time. */
  | { kind: "caller"; url: string; secret?: string | undefined };

export interface WebhookDelivery {
  to: WebhookDestination;
  body: unknown;
  requestId: string;
}

/** How a delivery ended, for the job's result: pending until its last attempt. */
export interface DeliveryRecord {
  status: "pending" | "delivered" | "failed";
  attempts: number;
  /** The receiver's answer to the last attempt, when it answered. */
  http_status?: number;
  /** Why the last attempt failed. */
  error?: string;
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

/**
 * POSTs and resolves with the receiver's status as soon as its headers arrive; the body is never read and the
 * connection is dropped, so a receiver answering a huge or endless body costs neither memory nor time. Rejects as
 * got does (network errors, the request deadline, the address policy's refusals).
 */
export function postForStatus(
  http: Got,
  url: string | URL,
  options: { body: string; headers: Record<string, string>; signal?: AbortSignal },
): Promise<number> {
  return new Promise((resolve, reject) => {
    const stream = http.stream.post(url, options);
    stream.once("response", (res: { statusCode: number }) => {
      resolve(res.statusCode);
      stream.destroy();
    });
    stream.once("error", reject);
  });
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
 * The one check of a caller-chosen callback URL (a request's webhook.url, a session's on_close_route) at
 * submission: throws a 400 error (CallbackAddressError) when the address policy refuses it. Deliveries
 * to a caller's destination are checked again at connect time (DNS, redirects).
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

/**
 * Delivers webhooks off the request path: `send` returns at once; delivery retries with capped, jittered backoff
 * on network errors, 5xx, 408 and 429, and gives up on any other 4xx. Each attempt has a deadline. Failures are
 * logged and counted, never thrown at the caller. `drain` waits for deliveries in flight (for shutdown).
 */
export class WebhookSender {
  private readonly http: Got;
  /** For caller-chosen URLs: the address policy enforced on the address connected to. */
  private readonly guarded: Got;
  private readonly inFlight = new Set<Promise<DeliveryRecord>>();
  private readonly stopping = new AbortController();

  constructor(private readonly opts: WebhookOptions) {
    this.http = got.extend({
      timeout: { request: opts.timeoutMs },
      retry: { limit: 0 },
      throwHttpErrors: false,
    });
    this.guarded = this.http.extend(callbackGuards(opts.allowPrivate ?? false) as object);
  }

  /** Starts the delivery; the promise settles (never rejects) with its outcome once the last attempt ended. */
  send(delivery: WebhookDelivery): Promise<DeliveryRecord> {
    const p = this.deliver(delivery).finally(() => this.inFlight.delete(p));
    this.inFlight.add(p);
    return p;
  }

  private async deliver(d: WebhookDelivery): Promise<DeliveryRecord> {
    const body = JSON.stringify(d.body);
    const id = `msg_${randomUUID()}`;
    const log = this.opts.logger.child({ request_id: d.requestId, stage: "webhook" });
    const { url } = d.to;
    const http = d.to.kind === "caller" ? this.guarded : this.http;
    const signing: WebhookSigning = d.to.kind === "operator" ? d.to.signing : { secret: d.to.secret };
    const record: DeliveryRecord = { status: "pending", attempts: 0 };
    let started = 0;
    const attempt = async (n: number): Promise<void> => {
      started = Date.now();
      record.attempts = n;
      delete record.http_status;
      let status: number;
      try {
        const timestamp = Math.floor((this.opts.now ?? Date.now)() / 1000);
        status = await postForStatus(http, url, {
          body,
          headers: {
            "content-type": "application/json",
            ...signatureHeaders(id, timestamp, body, signing),
          },
          signal: this.stopping.signal,
        });
        record.http_status = status;
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
      record.status = "delivered";
      delete record.error;
      this.opts.onAttempt?.("delivered");
      log.info({ attempt: n, status, duration_ms: Date.now() - started }, "webhook delivered");
    };
    await retry(attempt, {
      attempts: this.opts.maxAttempts,
      delayMs: (n) => backoffDelay(n, this.opts.baseDelayMs ?? 500, this.opts.maxDelayMs ?? 30_000),
      signal: this.stopping.signal,
      retryable: (err) => err instanceof DeliveryFailure && err.retryable,
      onFailure: (err, n, willRetry) => {
        // An error message may quote the URL: only its scheme, host and port reach the log and the record.
        const why = (err instanceof Error ? err.message : String(err)).split(url).join(redactUrl(url) ?? "");
        record.error = why;
        if (this.stopping.signal.aborted) return; // shutdown abandons deliveries quietly
        this.opts.onAttempt?.(willRetry ? "retry" : "failed");
        log.warn(
          { attempt: n, duration_ms: Date.now() - started, url: redactUrl(url) },
          `webhook ${why}${willRetry ? "; retrying" : "; giving up"}`,
        );
      },
    }).catch(() => {
      record.status = "failed"; // logged and counted above: a delivery never fails its job
    });
    return record;
  }

  /** Waits up to `timeoutMs` for deliveries in flight, then abandons the rest. */
  async drain(timeoutMs: number): Promise<void> {
    const timer = setTimeout(() => this.stopping.abort(), timeoutMs);
    await Promise.allSettled([...this.inFlight]);
    clearTimeout(timer);
    this.stopping.abort();
  }
}
