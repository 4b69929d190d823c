import { readFileSync } from "node:fs";
import { join } from "node:path";
import { errorCatalogue } from "../../lib/errors.js";
import { repoRoot } from "../../scripts/services/paths.js";
import type { Fleet } from "./fleet.js";
import { RED_PIXEL_PNG, type InputServer } from "./inputs.js";
import type { VastAnswer, VastCaller, VastRequest } from "./vast-caller.js";
import type { WebhookReceiver } from "./webhooks.js";

/** A seeded PRNG (mulberry32): the same seed gives the same plan of requests and faults. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The request kinds and their share of the traffic. */
export const KINDS = {
  sync: 20,
  async: 14,
  stream: 10,
  retry: 10,
  webhook: 12,
  "data-input": 8,
  "url-input": 6,
  /** Through the official `vastai` client (sync, stream or async): a bounded share, its process is shared. */
  "vast-client": 8,
  /** A session opened with the official client (on_close_route set), used for one request, then closed. */
  session: 3,
  cancel: 5,
  checkpoint: 3,
  "bad-workflow": 6,
  "bad-data-uri": 6,
  "bad-schema": 6,
} as const;
export type Kind = keyof typeof KINDS;
/** Kinds whose every request is the client's mistake: the answer must be a 4xx. */
export const CLIENT_MISTAKES: readonly Kind[] = ["bad-workflow", "bad-data-uri", "bad-schema"];

/** How a request reaches the fleet: a worker's local API, /route/ by hand, or the official client's /route/. */
export type Via = "local" | "routed" | "vast";

export interface Attempt {
  at: number;
  via: Via;
  worker: number | undefined;
  http: number | undefined;
  code: string | undefined;
  /** A network error (no answer). */
  error?: string;
  ms: number;
}

/** What the soak reads of a worker's answers: a result document or an error (a few fields of either). */
export interface Doc {
  id?: string;
  status?: string;
  code?: string;
  error?: { code?: string; error?: string } | string;
  output?: { filename?: string; url?: string; local_path?: string }[];
  webhook?: { status?: string; error?: string; attempts?: number };
  [key: string]: unknown;
}
/** The document in the official client's answer (for a stream that began, its last line's result). */
function vastBody(response: unknown, stream: boolean): Doc | undefined {
  if (!stream || !Array.isArray(response))
    return response && typeof response === "object" ? (response as Doc) : undefined;
  const lines = response as Doc[];
  const last = lines[lines.length - 1];
  if (!last) return undefined;
  return last.type === "result" ? ((last.result as Doc | undefined) ?? last) : last;
}

/** A ComfyUI API-format graph, as the soak builds them. */
type Graph = Record<string, { class_type: string; inputs: Record<string, unknown> }>;
type Nodes = Record<string, { inputs: Record<string, unknown> }>;

const errorCode = (d: Doc | undefined) =>
  d?.code ?? (typeof d?.error === "object" ? d.error.code : undefined);

export interface LedgerEntry {
  seq: number;
  kind: Kind;
  via: Via;
  request_id: string;
  started: number;
  ended: number;
  attempts: Attempt[];
  /** What the client was told last: HTTP status and the job's status (or error code). */
  http: number | undefined;
  status: string | undefined;
  code: string | undefined;
  /** The job exists on the endpoint (an answer carried its id): it must reach one terminal state. */
  accepted: boolean;
  /** The terminal document the client saw (sync, stream, or the poll's last). */
  doc?: Doc;
  webhook?: boolean;
  /** A second submission under the same id (kind retry): what it was told. */
  repeat?: { http: number | undefined; id: string | undefined; status: string | undefined };
  /** How often an async job's retryable failure was submitted again. */
  resubmits?: number;
  /** Kind session: the sessions the official client opened (their ids and workers), and whether it closed them. */
  sessions?: {
    id: string | undefined;
    worker: number | undefined;
    opened: number;
    ended: number;
    closed: boolean;
    close_error?: string;
  }[];
  note?: string;
}

/** A soak session's lifetime: one that was not closed (its worker was unreachable) expires this long after. */
export const SESSION_LIFETIME_S = 30;
/** The error codes the catalogue marks retryable: a caller sends the request again. */
const retryableCodes = () =>
  new Set(
    errorCatalogue()
      .filter((e) => e.retryable)
      .map((e) => e.code),
  );
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
/** What the Vast client sends again: no answer, a 5xx, or 429 (overloaded: admission control). */
export const RETRYABLE_HTTP = (s: number | undefined) => s === undefined || s >= 500 || s === 429;
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** A workflow file of the repository, read once (on first use). */
const graphs = new Map<string, Nodes>();
function graph(path: string): Nodes {
  if (!graphs.has(path)) graphs.set(path, JSON.parse(readFileSync(join(repoRoot, path), "utf8")) as Nodes);
  return structuredClone(graphs.get(path)!);
}

/** The model-free graph (milliseconds on a CPU), with a per-request colour so that ComfyUI's cache never answers. */
function modelFree(rand: () => number): Nodes {
  const w = graph("test/fixtures/workflows/model-free.json");
  w["1"]!.inputs.color = Math.floor(rand() * 0xffffff);
  return w;
}
function tinyCheckpoint(rand: () => number, steps: number): Nodes {
  const w = graph("misc/workflows/sd15_text2image.json");
  w["5"]!.inputs.width = 64;
  w["5"]!.inputs.height = 64;
  w["3"]!.inputs.steps = steps;
  w["3"]!.inputs.seed = Math.floor(rand() * 2 ** 31);
  return w;
}
function loadImage(image: string): Graph {
  return {
    "10": { class_type: "LoadImage", inputs: { image } },
    "11": { class_type: "ImageInvert", inputs: { image: ["10", 0] } },
    "12": { class_type: "SaveImage", inputs: { images: ["11", 0], filename_prefix: "loaded" } },
  };
}

export interface TrafficDeps {
  fleet: Fleet;
  receiver: WebhookReceiver;
  /** The official client's process (kinds vast-client and session). */
  vast: VastCaller;
  /** The server of URL inputs. */
  inputs: InputServer;
  seed: number;
  log: (line: string) => void;
}

/** Sends requests and records what each was told. */
export class Traffic {
  readonly ledger: LedgerEntry[] = [];
  constructor(private readonly deps: TrafficDeps) {}

  private pickKind(rand: () => number): Kind {
    const total = Object.values(KINDS).reduce((a, b) => a + b, 0);
    let r = rand() * total;
    for (const [k, w] of Object.entries(KINDS)) if ((r -= w) < 0) return k as Kind;
    return "sync";
  }

  /** Runs request `seq` of the plan (its kind, route and body come from the seed and `seq` alone). */
  async one(seq: number): Promise<LedgerEntry> {
    const rand = prng(this.deps.seed * 1_000_003 + seq);
    const kind = this.pickKind(rand);
    let via: Via = rand() < 0.5 ? "local" : "routed";
    if (kind === "vast-client" || kind === "session") via = "vast";
    const id = `soak-${this.deps.seed}-${seq}`;
    const e: LedgerEntry = {
      seq,
      kind,
      via,
      request_id: id,
      started: Date.now(),
      ended: 0,
      attempts: [],
      http: undefined,
      status: undefined,
      code: undefined,
      accepted: false,
    };
    this.ledger.push(e);
    const input = (workflow: unknown, extra: Record<string, unknown> = {}) => ({
      request_id: id,
      workflow_json: workflow,
      ...extra,
    });
    try {
      switch (kind) {
        case "sync":
          await this.submit(e, "/generate/sync", input(modelFree(rand)), rand);
          break;
        case "data-input":
          await this.submit(
            e,
            "/generate/sync",
            input(loadImage(`data:image/png;base64,${RED_PIXEL_PNG.toString("base64")}`)),
            rand,
          );
          break;
        case "url-input":
          await this.submit(e, "/generate/sync", input(loadImage(this.deps.inputs.url(id))), rand);
          break;
        case "vast-client": {
          const r = rand();
          if (r < 0.6) await this.submit(e, "/generate/sync", input(modelFree(rand)), rand);
          else if (r < 0.85) await this.submit(e, "/generate/stream", input(modelFree(rand)), rand);
          else await this.asyncJob(e, input(modelFree(rand)), rand);
          break;
        }
        case "session":
          await this.inSession(e, input(modelFree(rand)), rand);
          break;
        case "checkpoint":
          await this.submit(e, "/generate/sync", input(tinyCheckpoint(rand, 2)), rand);
          break;
        case "stream":
          e.via = "local";
          await this.submit(e, "/generate/stream", input(modelFree(rand)), rand);
          break;
        case "async":
          await this.asyncJob(e, input(modelFree(rand)), rand);
          break;
        case "webhook":
          e.webhook = true;
          await this.asyncJob(
            e,
            input(modelFree(rand), {
              webhook: { url: this.deps.receiver.url(id), secret: this.deps.receiver.secret },
            }),
            rand,
          );
          break;
        case "retry": {
          const body = input(modelFree(rand));
          await this.submit(e, "/generate/sync", body, rand);
          // The same request again, through the other path: the endpoint answers the same job.
          let again = await this.call(e.via === "local" ? "routed" : "local", "/generate/sync", body, rand);
          for (let n = 1; n < 5 && RETRYABLE_HTTP(again.http); n++) {
            await pause(1_000 + rand() * 2_000);
            again = await this.call(e.via === "local" ? "routed" : "local", "/generate/sync", body, rand);
          }
          e.repeat = { http: again.http, id: again.body?.id, status: again.body?.status };
          break;
        }
        case "cancel": {
          await this.submit(e, "/generate", input(tinyCheckpoint(rand, 20)), rand);
          if (e.accepted) {
            await pause(200 + rand() * 1500);
            const other = this.deps.fleet.workers[Math.floor(rand() * this.deps.fleet.workers.length)]!;
            await this.post(`${other.api}/cancel/${id}`, {}, 30_000).catch(() => undefined);
            await this.poll(e, rand);
          }
          break;
        }
        case "bad-workflow":
          await this.submit(
            e,
            "/generate/sync",
            input({ "1": { class_type: "NoSuchNodeSoak", inputs: {} } }),
            rand,
          );
          break;
        case "bad-data-uri":
          await this.submit(
            e,
            "/generate/sync",
            input(loadImage("data:image/png;base64,@@not-base64@@")),
            rand,
          );
          break;
        case "bad-schema":
          await this.submit(e, "/generate/sync", input("not a workflow"), rand);
          break;
      }
    } catch (err) {
      e.note = `client error: ${err instanceof Error ? err.message : String(err)}`;
    }
    e.ended = Date.now();
    return e;
  }

  /**
   * Sends the request, and again under the same request_id while the answer is retryable (a 5xx or no answer),
   * up to 5 tries, as the Vast client does (it retries 5xx; routed, each try may land on another worker).
   */
  private async submit(e: LedgerEntry, path: string, input: unknown, rand: () => number): Promise<void> {
    for (let n = 1; n <= 5; n++) {
      const r = await this.call(e.via, path, input, rand);
      e.attempts.push(r.attempt);
      e.http = r.http;
      e.status = r.body?.status;
      e.code = errorCode(r.body);
      if (r.body?.id === e.request_id) {
        e.accepted = true;
        e.doc = r.body;
      }
      if (!RETRYABLE_HTTP(r.http)) return;
      await pause(1_000 + rand() * 2_000);
    }
  }

  /**
   * Kind session: the official client opens a session (lifetime 30 s, its on_close_route the receiver's), sends one
   * request in it, and closes it. A retryable failure (the client gave up, a 5xx) is tried again as submit does,
   * in a new session each time; every session opened is recorded for the checker.
   */
  private async inSession(e: LedgerEntry, input: unknown, rand: () => number): Promise<void> {
    e.sessions = [];
    for (let n = 1; n <= 5; n++) {
      const at = Date.now();
      const a = await this.viaClient({
        route: "/generate/sync",
        payload: { input },
        timeout: 300,
        session: {
          lifetime: SESSION_LIFETIME_S,
          on_close_route: this.deps.receiver.closeUrl(e.request_id),
          on_close_payload: { soak: e.request_id },
        },
      });
      const worker = this.workerAt(a.session?.url ?? a.url);
      const body = a.error === undefined ? vastBody(a.response, false) : undefined;
      const http = a.error === undefined ? a.status : undefined;
      e.attempts.push({
        at,
        via: "vast",
        worker,
        http,
        code: errorCode(body),
        ...(a.error !== undefined && { error: a.error }),
        ms: Date.now() - at,
      });
      e.http = http;
      e.status = body?.status;
      e.code = errorCode(body);
      if (body?.id === e.request_id) {
        e.accepted = true;
        e.doc = body;
      }
      if (a.session)
        e.sessions.push({
          id: a.session.id,
          worker,
          opened: at,
          ended: Date.now(),
          closed: a.session.closed,
          ...(a.session.close_error !== undefined && { close_error: a.session.close_error }),
        });
      if (a.error !== undefined) e.note = `client: ${a.error}`;
      if (!RETRYABLE_HTTP(http)) return;
      await pause(1_000 + rand() * 2_000);
    }
  }

  /**
   * A request through the official client. The client gives up at once when /route/ does not answer (the router
   * down is a fault); a caller asks again, as route() does for the hand-made path, for up to 60 s.
   */
  private async viaClient(req: VastRequest): Promise<VastAnswer> {
    const deadline = Date.now() + 60_000;
    for (;;) {
      const a = await this.deps.vast.request(req);
      if (a.error === undefined || !/Failed to route endpoint/.test(a.error) || Date.now() > deadline)
        return a;
      await pause(500);
    }
  }

  /** The fleet's worker whose routed URL the router handed out (the client may add a slash). */
  private workerAt(url: string | undefined): number | undefined {
    const u = url?.replace(/\/$/, "");
    return this.deps.fleet.workers.find((w) => w.routed === u)?.index;
  }

  private async call(
    via: Via,
    path: string,
    input: unknown,
    rand: () => number,
  ): Promise<{ http: number | undefined; body: Doc | undefined; attempt: Attempt }> {
    const { workers } = this.deps.fleet;
    const at = Date.now();
    let worker: number | undefined;
    if (via === "vast") {
      const stream = path === "/generate/stream";
      const a = await this.viaClient({ route: path, payload: { input }, timeout: 300, stream });
      worker = this.workerAt(a.url);
      const body = a.error === undefined ? vastBody(a.response, stream) : undefined;
      const http = a.error === undefined ? a.status : undefined;
      return {
        http,
        body,
        attempt: {
          at,
          via,
          worker,
          http,
          code: errorCode(body),
          ...(a.error !== undefined && { error: a.error }),
          ms: Date.now() - at,
        },
      };
    }
    try {
      let url: string;
      let body: unknown;
      if (via === "local") {
        // A client of the local API tries the workers that answer (a drained one is down for a while).
        const up = workers.filter((w) => w.running());
        const w = (up.length > 0 ? up : workers)[Math.floor(rand() * (up.length || workers.length))]!;
        worker = w.index;
        url = `${w.api}${path}`;
        body = { input };
      } else {
        const auth = await this.route();
        worker = workers.find((w) => w.routed === auth.url)?.index;
        url = `${String(auth.url)}${path}`;
        body = { auth_data: auth, payload: { input } };
      }
      const timeout = path === "/generate" ? 60_000 : 300_000;
      const res = await this.post(url, body, timeout);
      return {
        http: res.status,
        body: res.body,
        attempt: { at, via, worker, http: res.status, code: errorCode(res.body), ms: Date.now() - at },
      };
    } catch (err) {
      const error = err instanceof Error ? err.message : String(err);
      return {
        http: undefined,
        body: undefined,
        attempt: { at, via, worker, http: undefined, code: undefined, error, ms: Date.now() - at },
      };
    }
  }

  /** The router's /route/: a signed auth_data for the worker it picks (waits while none is ready, 60 s). */
  private async route(): Promise<{ url?: string } & Record<string, unknown>> {
    const deadline = Date.now() + 60_000;
    for (;;) {
      // The router down (a fault) is asked again, as while it has no ready worker.
      const body = await fetch(`${this.deps.fleet.routerUrl}/route/`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ endpoint: "soak", api_key: "soak", cost: 100 }),
        signal: AbortSignal.timeout(10_000),
      })
        .then((res) => res.json() as Promise<{ url?: string } & Record<string, unknown>>)
        .catch(() => undefined);
      if (body?.url) return body;
      if (Date.now() > deadline) throw new Error("the router routed nothing for 60 s");
      await pause(500);
    }
  }

  /** POSTs JSON; for a stream, the last line (the result) is the body. */
  private async post(
    url: string,
    body: unknown,
    timeoutMs: number,
  ): Promise<{ status: number; body: Doc | undefined }> {
    const res = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await res.text();
    if (!text) return { status: res.status, body: undefined };
    if ((res.headers.get("content-type") ?? "").includes("ndjson") || url.endsWith("/generate/stream")) {
      const lines = text.trim().split("\n");
      try {
        const last = JSON.parse(lines[lines.length - 1]!) as Doc;
        return {
          status: res.status,
          body: last.type === "result" ? ((last.result as Doc | undefined) ?? last) : last,
        };
      } catch {
        return { status: res.status, body: { unparsed: text.slice(0, 200) } };
      }
    }
    try {
      return { status: res.status, body: JSON.parse(text) };
    } catch {
      return { status: res.status, body: { unparsed: text.slice(0, 200) } };
    }
  }

  /**
   * An async job: submitted, polled to its end, and submitted again under its request_id while that end is a
   * retryable failure (up to 3 times), as a caller following the error catalogue does.
   */
  private async asyncJob(e: LedgerEntry, input: unknown, rand: () => number): Promise<void> {
    await this.submit(e, "/generate", input, rand);
    await this.poll(e, rand);
    for (let n = 0; n < 3 && e.status === "failed" && retryableCodes().has(String(e.code)); n++) {
      e.resubmits = n + 1;
      await pause(1_000 + rand() * 2_000);
      e.doc = undefined;
      await this.submit(e, "/generate", input, rand);
      await this.poll(e, rand);
    }
  }

  /** Polls /result/{id} on either worker's local API (at random, each time) until the job ended; 180 s. */
  private async poll(e: LedgerEntry, rand: () => number): Promise<void> {
    if (!e.accepted) return;
    const deadline = Date.now() + 180_000;
    while (Date.now() < deadline) {
      if (e.doc && TERMINAL.has(String(e.doc.status))) break;
      await pause(300 + rand() * 500);
      const up = this.deps.fleet.workers.filter((w) => w.running());
      if (up.length === 0) continue;
      const w = up[Math.floor(rand() * up.length)]!;
      const res = await fetch(`${w.api}/result/${e.request_id}`, { signal: AbortSignal.timeout(10_000) })
        .then(async (r) => ({
          status: r.status,
          body: (await r.json().catch(() => undefined)) as Doc | undefined,
        }))
        .catch(() => undefined);
      if (res?.status === 200 && res.body?.id === e.request_id) e.doc = res.body;
    }
    e.status = e.doc?.status;
    e.code = errorCode(e.doc) ?? e.code;
  }
}
