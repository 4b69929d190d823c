import { generateKeyPairSync, randomInt, sign, type KeyObject } from "node:crypto";
import { once } from "node:events";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import express from "express";
import { urlMessage } from "../../worker/auth/signature.js";

export interface WorkerRecord {
  url: string;
  id: number;
  lastStatus: Record<string, unknown>;
  lastSeen: number;
  /** Workload routed to it and not yet reported finished (the router's own view, between reports). */
  assigned: Map<number, number>;
}

export interface EmulatorOptions {
  host?: string;
  port?: number;
  /** Only this API key may route; any key when undefined. */
  apiKey?: string;
  /** A worker silent for longer is not routed to. */
  staleAfterMs?: number;
  log?: (line: string) => void;
  /** Only record reports and serve /pubkey/ (no /route/, no /workers): the conformance harness's autoscaler. */
  recordOnly?: boolean;
  /**
   * How /pubkey/ frames the key: "spki" (-----BEGIN PUBLIC KEY-----) or "pkcs1" (-----BEGIN RSA PUBLIC KEY-----).
   * Upstream's worker library imports either (pycryptodome's RSA.import_key), so a worker must too.
   */
  pubkeyFormat?: "spki" | "pkcs1";
}

/** The fields vastai 1.9.1's worker library sends in each /delete_requests/ entry, with their JSON types. */
export const DELETE_REQUEST_ENTRY: Record<string, string> = {
  request_idx: "number",
  success: "boolean",
  status: "string",
  entered_queue_at: "number",
  work_started_at: "number",
  work_completed_at: "number",
};
/** The statuses a finished request can have in vastai 1.9.1 (data_types.RequestMetrics.status). */
export const DELETE_REQUEST_STATUSES = ["Success", "Error", "Cancelled", "Rejected"];

/** The fields of vastai 1.9.1's WorkerStatusData, with their JSON types. */
export const WORKER_STATUS_FIELDS: Record<string, string> = {
  id: "number",
  mtoken: "string",
  version: "string",
  loadtime: "number",
  cur_load: "number",
  rej_load: "number",
  new_load: "number",
  error_msg: "string",
  max_perf: "number",
  cur_perf: "number",
  cur_capacity: "number",
  max_capacity: "number",
  num_requests_working: "number",
  num_requests_recieved: "number",
  additional_disk_usage: "number",
  disk_usage: "number",
  working_request_idxs: "array",
  url: "string",
};

/**
 * A local stand-in for Vast's router/autoscaler that speaks the real protocol: /route/ picks the ready worker with
 * the least expected wait ((its reported load + what was routed since) / max_perf) and signs `{"url": ...}` with its
 * own RSA key; /pubkey/ serves that key; /worker_status/ and /delete_requests/ record what workers report.
 */
export class RouterEmulator {
  readonly workers = new Map<string, WorkerRecord>();
  readonly reports: { path: string; body: Record<string, unknown>; at: number }[] = [];
  readonly routes: Record<string, unknown>[] = [];
  /** What /route/ handed out: the request_idx and the worker, in order. */
  readonly routed: { request_idx: number; url: string }[] = [];
  /** Reports whose shape differs from vastai 1.9.1's (a field missing, extra or of another type). */
  readonly problems: string[] = [];
  readonly publicKeyPem: string;
  private readonly privateKey: KeyObject;
  /**
   * Reqnums as a busy router hands them out: increasing overall but not in arrival order (blocks of 8 shuffled),
   * from a random start. Unique, so that they stay within a replay window.
   */
  private reqnumNext = randomInt(1_000, 1_000_000);
  private reqnumPool: number[] = [];
  /** request_idx values are random and unique (the router's own ids, in no order). */
  private readonly usedRequestIdx = new Set<number>();
  private server: Server | undefined;
  private waiters: { test: () => boolean; resolve: () => void }[] = [];
  /** Tests may steer routing (for example to send the first request to a busy worker). */
  pickOverride: ((ready: WorkerRecord[]) => WorkerRecord | undefined) | undefined;

  constructor(private readonly opts: EmulatorOptions = {}) {
    const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
    this.privateKey = privateKey;
    this.publicKeyPem = publicKey.export({ type: opts.pubkeyFormat ?? "spki", format: "pem" }).toString();
  }

  private nextReqnum(): number {
    if (this.reqnumPool.length === 0) {
      const block = Array.from({ length: 8 }, (_, i) => this.reqnumNext + i);
      this.reqnumNext += block.length;
      for (let i = block.length - 1; i > 0; i--) {
        const j = randomInt(i + 1);
        [block[i], block[j]] = [block[j]!, block[i]!];
      }
      this.reqnumPool = block;
    }
    return this.reqnumPool.shift()!;
  }

  /** A fresh random request_idx. */
  newRequestIdx(): number {
    for (;;) {
      const idx = randomInt(1, 2 ** 31 - 1);
      if (this.usedRequestIdx.has(idx)) continue;
      this.usedRequestIdx.add(idx);
      return idx;
    }
  }

  /** Signs `{"url": url}` the way the router does. */
  /** A /route/ answer for `url`: what the client passes on as auth_data. Each call takes the next reqnum. */
  authData(
    url: string,
    opts: { cost?: number; endpoint?: string; requestIdx?: number } = {},
  ): Record<string, unknown> {
    const reqnum = this.nextReqnum();
    return {
      url,
      signature: this.signUrl(url),
      cost: opts.cost ?? 100,
      endpoint: opts.endpoint ?? "",
      reqnum,
      request_idx: opts.requestIdx ?? this.newRequestIdx(),
    };
  }

  signUrl(url: string): string {
    return sign("sha256", Buffer.from(urlMessage(url), "utf8"), this.privateKey).toString("base64");
  }

  app(): express.Express {
    const app = express();
    app.disable("x-powered-by");
    app.use(express.json({ limit: "10mb", type: () => true }));
    const log = this.opts.log ?? (() => undefined);

    app.get("/pubkey/", (_req, res) => void res.type("text/plain").send(this.publicKeyPem));

    app.post("/worker_status/", (req, res) => {
      const body = req.body as Record<string, unknown>;
      this.record("/worker_status/", body);
      this.checkShape("/worker_status/", body, WORKER_STATUS_FIELDS);
      if (this.opts.recordOnly) return void res.json({ ok: true });
      const url = String(body.url ?? "");
      let w = this.workers.get(url);
      if (!w) {
        w = { url, id: Number(body.id), lastStatus: body, lastSeen: Date.now(), assigned: new Map() };
        this.workers.set(url, w);
        log(`worker ${url} registered (id ${String(body.id)})`);
      }
      const wasReady = isReady(w.lastStatus);
      w.lastStatus = body;
      w.lastSeen = Date.now();
      // The worker's cur_load now counts what we assigned before this report.
      for (const idx of (body.working_request_idxs as number[] | undefined) ?? []) w.assigned.delete(idx);
      if (!wasReady && isReady(body)) log(`worker ${url} is ready: max_perf ${String(body.max_perf)}`);
      if (body.error_msg) log(`worker ${url} reports error: ${String(body.error_msg)}`);
      res.json({ ok: true });
    });

    app.post("/delete_requests/", (req, res) => {
      const body = req.body as { worker_id?: number; requests?: { request_idx: number }[] };
      this.record("/delete_requests/", body as Record<string, unknown>);
      this.checkShape("/delete_requests/", body as Record<string, unknown>, {
        worker_id: "number",
        mtoken: "string",
        requests: "array",
      });
      for (const r of Array.isArray(body.requests) ? body.requests : []) {
        this.checkShape("/delete_requests/ entry", r as Record<string, unknown>, DELETE_REQUEST_ENTRY);
        const status = (r as Record<string, unknown>).status;
        if (!DELETE_REQUEST_STATUSES.includes(String(status)))
          this.problems.push(`/delete_requests/ entry: unknown status ${JSON.stringify(status)}`);
      }
      for (const w of this.workers.values()) {
        if (w.id !== body.worker_id) continue;
        for (const r of body.requests ?? []) w.assigned.delete(r.request_idx);
      }
      res.json({ ok: true });
    });

    if (this.opts.recordOnly) return app;

    app.post("/route/", (req, res) => {
      const body = req.body as Record<string, unknown>;
      const key = (req.get("authorization") ?? "").replace(/^Bearer\s+/i, "") || String(body.api_key ?? "");
      if (this.opts.apiKey !== undefined && key !== this.opts.apiKey) {
        res.status(401).json({ error: "invalid api_key" });
        return;
      }
      this.routes.push(body);
      const cost = Number(body.cost ?? 100) || 100;
      const given = Number(body.request_idx ?? 0);
      const requestIdx = given > 0 ? given : this.newRequestIdx();
      const endpoint = String(body.endpoint ?? "");
      const worker = this.pick();
      if (!worker) {
        res.json({ endpoint, status: "WAITING", request_idx: requestIdx });
        return;
      }
      worker.assigned.set(requestIdx, cost);
      this.routed.push({ request_idx: requestIdx, url: worker.url });
      res.json(this.authData(worker.url, { cost, endpoint, requestIdx }));
    });

    app.get("/workers", (_req, res) => {
      res.json(
        [...this.workers.values()].map((w) => ({
          url: w.url,
          id: w.id,
          ready: isReady(w.lastStatus),
          last_seen_s_ago: (Date.now() - w.lastSeen) / 1000,
          status: w.lastStatus,
        })),
      );
    });
    return app;
  }

  private checkShape(what: string, body: Record<string, unknown>, fields: Record<string, string>): void {
    if (body === null || typeof body !== "object") return void this.problems.push(`${what}: not an object`);
    for (const [k, type] of Object.entries(fields)) {
      const v = body[k];
      const got = Array.isArray(v) ? "array" : v === null ? "null" : typeof v;
      if (got !== type) this.problems.push(`${what}: ${k} is ${got}, vastai 1.9.1 sends ${type}`);
    }
    for (const k of Object.keys(body)) if (!(k in fields)) this.problems.push(`${what}: extra field ${k}`);
  }

  private record(path: string, body: Record<string, unknown>): void {
    this.reports.push({ path, body, at: Date.now() });
    if (this.reports.length > 5_000) this.reports.shift();
    this.waiters = this.waiters.filter((w) => {
      if (!w.test()) return true;
      w.resolve();
      return false;
    });
  }

  /** Resolves once `test` holds after a report (checked now and on every report), or rejects after `timeoutMs`. */
  waitFor(test: () => boolean, timeoutMs = 30_000): Promise<void> {
    if (test()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("timed out waiting for a report")), timeoutMs);
      this.waiters.push({
        test,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
      });
    });
  }

  /** The ready worker with the least expected wait; undefined when none is ready. */
  pick(): WorkerRecord | undefined {
    const stale = this.opts.staleAfterMs ?? 30_000;
    if (this.pickOverride) {
      const ready = [...this.workers.values()].filter(
        (w) => isReady(w.lastStatus) && Date.now() - w.lastSeen <= stale,
      );
      return this.pickOverride(ready);
    }
    let best: { w: WorkerRecord; wait: number } | undefined;
    for (const w of this.workers.values()) {
      if (!isReady(w.lastStatus) || Date.now() - w.lastSeen > stale) continue;
      const assigned = [...w.assigned.values()].reduce((a, b) => a + b, 0);
      const wait = (Number(w.lastStatus.cur_load ?? 0) + assigned) / Number(w.lastStatus.max_perf);
      if (!best || wait < best.wait) best = { w, wait };
    }
    return best?.w;
  }

  async listen(): Promise<string> {
    this.server = createServer(this.app());
    this.server.listen(this.opts.port ?? 8080, this.opts.host ?? "127.0.0.1");
    await once(this.server, "listening");
    return this.url;
  }

  get url(): string {
    const a = this.server?.address() as AddressInfo;
    return `http://${this.opts.host ?? "127.0.0.1"}:${a.port}`;
  }

  async close(): Promise<void> {
    if (!this.server) return;
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server!.close(() => r()));
  }
}

function isReady(status: Record<string, unknown>): boolean {
  return Number(status.max_perf ?? 0) > 0 && !status.error_msg;
}
