import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";
import { LoopbackServer } from "./loopback.js";

export interface Delivery {
  at: number;
  request_id: string;
  /** The Standard Webhooks signature verified against the body, id and timestamp. */
  valid: boolean;
  /** What the receiver did: answered 200, answered 500, or closed the connection (a fault window). */
  answered: "200" | "500" | "closed";
  status: string | undefined;
}

export type ReceiverMode = "ok" | "500" | "close";

/** A session's on_close callback as it arrived (it is unsigned: upstream's callback carries no signature). */
export interface CloseCall {
  at: number;
  /** The key the soak put in the route's path (its ledger's request_id). */
  key: string;
  session_id: string | undefined;
  answered: "200" | "500" | "closed";
}

/**
 * The soak's webhook receiver: verifies each delivery's Standard Webhooks signature (`v1,<HMAC-SHA256>` of
 * `${webhook-id}.${webhook-timestamp}.${body}`) and records it; in a fault window it answers 500 or drops the
 * connection without answering.
 */
export class WebhookReceiver {
  readonly deliveries: Delivery[] = [];
  /** The sessions' on_close calls (to closeUrl()). */
  readonly closes: CloseCall[] = [];
  /** The secret every soak request names (`whsec_` + base64, as Standard Webhooks writes them). */
  readonly secret = `whsec_${randomBytes(24).toString("base64")}`;
  mode: ReceiverMode = "ok";
  private readonly http: LoopbackServer;

  constructor() {
    const server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        const body = Buffer.concat(chunks).toString("utf8");
        const requestId = decodeURIComponent((req.url ?? "").split("/").pop() ?? "");
        let parsed: { status?: string; session_id?: string } | undefined;
        try {
          parsed = JSON.parse(body) as { status?: string; session_id?: string };
        } catch {
          parsed = undefined;
        }
        const status = parsed?.status;
        const answered = this.mode === "ok" ? "200" : this.mode === "500" ? "500" : "closed";
        if ((req.url ?? "").startsWith("/on-close/")) {
          this.closes.push({ at: Date.now(), key: requestId, session_id: parsed?.session_id, answered });
        } else
          this.deliveries.push({
            at: Date.now(),
            request_id: requestId,
            valid: this.verify(req.headers, body),
            answered,
            status,
          });
        if (answered === "closed") return void req.socket.destroy();
        res.statusCode = answered === "500" ? 500 : 200;
        res.end(answered === "500" ? "soak fault: 500" : "ok");
      });
    });
    this.http = new LoopbackServer(server);
  }

  verify(headers: Record<string, string | string[] | undefined>, body: string): boolean {
    const id = headers["webhook-id"];
    const ts = headers["webhook-timestamp"];
    const sig = headers["webhook-signature"];
    if (typeof id !== "string" || typeof ts !== "string" || typeof sig !== "string") return false;
    const key = Buffer.from(this.secret.slice("whsec_".length), "base64");
    const expected = createHmac("sha256", key).update(`${id}.${ts}.${body}`).digest();
    return sig.split(" ").some((s) => {
      const [version, value] = s.split(",");
      if (version !== "v1" || !value) return false;
      const got = Buffer.from(value, "base64");
      return got.length === expected.length && timingSafeEqual(got, expected);
    });
  }

  url(requestId: string): string {
    return `${this.http.origin}/hook/${encodeURIComponent(requestId)}`;
  }

  /** A session's on_close_route: its calls are recorded in `closes` under `key`. */
  closeUrl(key: string): string {
    return `${this.http.origin}/on-close/${encodeURIComponent(key)}`;
  }

  async start(): Promise<this> {
    await this.http.start();
    return this;
  }

  stop(): Promise<void> {
    return this.http.stop();
  }
}
