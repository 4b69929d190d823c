import { randomInt, randomUUID } from "node:crypto";
import type { RouterEmulator } from "../../scripts/router-emulator/emulator.js";
import { startHeldImage, type HeldImage } from "../harness/http-fixtures.js";
import { modelFree } from "../harness/workflows.js";

/** One worker under comparison, as the recording autoscaler and the callers see it. */
export interface Target {
  name: string;
  /** Its CONTAINER_ID: the `id` / `worker_id` of its reports. */
  id: number;
  /** Where the scripted callers send requests. */
  base: string;
  /** Its plain-HTTP listener (WORKER_HTTP_PORT), where /session/end is served without TLS. */
  plainHttp: string;
}

/** What one worker did, flattened: `step.what` -> a normalised value (a string, for a table cell). */
export type Observations = Map<string, string>;

type Report = RouterEmulator["reports"][number];

const TIMEOUT_MS = 30_000;

/**
 * A job that stays in flight until the test releases it: its input image is downloaded from a server that holds
 * the body (see startHeldImage), however fast the machine. A graph of its own (not the fast one's with other
 * sizes): ours weighs a workflow shape it has never seen as one benchmark's worth, as upstream weighs every
 * request, so the overload step compares like with like. Each URL is new: a downloaded input is cached by URL.
 */
function heldWorkflow(image: HeldImage, label: string): Record<string, unknown> {
  return {
    "1": { class_type: "LoadImage", inputs: { image: image.url(`${label}-${randomUUID()}.png`) } },
    "4": { class_type: "ImageInvert", inputs: { image: ["1", 0] } },
    "3": { class_type: "SaveImage", inputs: { images: ["4", 0], filename_prefix: "conformance/slow" } },
  };
}

/** A node without a class_type: the wrapper behind either worker refuses it (400) before ComfyUI sees it. */
const BARRIER_WORKFLOW = { "1": { inputs: {} } };

function fastWorkflow(): Record<string, unknown> {
  const wf = modelFree();
  delete wf["4"];
  wf["1"].inputs.color = randomInt(0, 0xffffff);
  wf["3"].inputs.filename_prefix = "conformance/fast";
  return wf;
}

/**
 * Runs the scripted traffic against one worker and records, step by step, what it answered and what it reported.
 * Every step ends with a barrier: a signed request whose workflow the wrapper refuses at once, and whose finish (a
 * /delete_requests/ entry and a /worker_status/ carrying its new_load) marks that everything before it has been
 * reported. (A request with a bad signature would be cheaper, but ours reports nothing of those.) Request ids are
 * replaced by the labels of the requests that carried them; timestamps by whether they are set and in order.
 */
export class ScenarioRun {
  readonly obs: Observations = new Map();
  private readonly labels = new Map<number, string>();
  private reportedUrl = "";
  private windowStart = 0;
  private lastReceived = 0;
  private readonly highestReqnums: number[] = [];

  constructor(
    private readonly router: RouterEmulator,
    readonly target: Target,
  ) {}

  private statuses(since = 0): Report[] {
    return this.router.reports.filter(
      (r) => r.path === "/worker_status/" && r.body.id === this.target.id && r.at >= since,
    );
  }

  private deletes(since = 0): Report[] {
    return this.router.reports.filter(
      (r) => r.path === "/delete_requests/" && r.body.worker_id === this.target.id && r.at >= since,
    );
  }

  /** Waits for the worker's ready report and takes the URL it reported (the one the router signs). */
  async ready(): Promise<void> {
    await this.router.waitFor(() => this.statuses().some((r) => Number(r.body.max_perf) > 0), 60_000);
    const first = this.statuses().find((r) => Number(r.body.max_perf) > 0)!.body;
    this.reportedUrl = String(first.url);
    const s = first;
    this.obs.set("startup.status.fields", Object.keys(s).sort().join(","));
    for (const k of ["version", "max_perf", "error_msg", "cur_capacity", "max_capacity", "mtoken"])
      this.obs.set(`startup.status.${k}`, JSON.stringify(s[k]));
    this.obs.set(
      "startup.status.url",
      s.url === `${this.target.base}` ? "<its address>" : JSON.stringify(s.url),
    );
    this.obs.set("startup.status.loadtime", typeof s.loadtime === "number" && s.loadtime > 0 ? ">0" : "0");
    this.windowStart = Date.now();
  }

  /** Signed auth_data for `label`, as the router hands it out for this worker's reported URL. */
  auth(label: string, cost = 100): Record<string, unknown> {
    const a = this.router.authData(this.reportedUrl, { cost, endpoint: "conformance" });
    this.labels.set(Number(a.request_idx), label);
    this.highestReqnums.push(Number(a.reqnum));
    return a;
  }

  badAuth(label: string): Record<string, unknown> {
    return { ...this.auth(label), signature: this.router.signUrl("http://127.0.0.1:1/not-this-worker") };
  }

  async send(
    path: string,
    body: unknown,
    signal?: AbortSignal,
    base = this.target.base,
  ): Promise<{ status: number; contentType: string; text: string }> {
    let res: globalThis.Response;
    try {
      res = await fetch(`${base}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: typeof body === "string" ? body : JSON.stringify(body),
        signal: signal ?? AbortSignal.timeout(TIMEOUT_MS * 2),
      });
    } catch (err) {
      if (signal) throw err;
      // A server that drops the connection instead of answering: that is what it answered.
      const cause = (err as { cause?: { message?: string } }).cause?.message ?? String(err);
      return { status: 0, contentType: "", text: `(no answer: ${cause})` };
    }
    const text = await res.text();
    return { status: res.status, contentType: res.headers.get("content-type") ?? "", text };
  }

  /** Records status, the content type of a non-empty body and the normalised body. */
  answer(key: string, res: { status: number; contentType: string; text: string }, shapeOnly = false): void {
    this.obs.set(`${key}.status`, String(res.status));
    this.obs.set(`${key}.content-type`, res.text ? res.contentType.split(";")[0]!.trim() : "(empty body)");
    let body: unknown = res.text;
    try {
      body = res.text ? JSON.parse(res.text) : "";
    } catch {
      // not JSON: compared as text
    }
    this.obs.set(`${key}.body`, JSON.stringify(shapeOnly ? shape(body) : normaliseBody(body)));
  }

  async request(key: string, label: string, input: unknown, extra: Record<string, unknown> = {}) {
    const res = await this.send("/generate/sync", {
      auth_data: this.auth(label),
      payload: { input },
      ...extra,
    });
    this.answer(key, res, res.status === 200);
    return res;
  }

  /** Resolves with the first status report after `since` that passes `test`, or undefined after `timeoutMs`. */
  async statusWhere(test: (b: Record<string, unknown>) => boolean, since: number, timeoutMs = 10_000) {
    const find = () => this.statuses(since).find((r) => test(r.body));
    await this.router.waitFor(() => find() !== undefined, timeoutMs).catch(() => undefined);
    return find()?.body;
  }

  /** Records the report fields that describe work in flight (cur_load, the requests working). */
  recordInFlight(key: string, body: Record<string, unknown> | undefined): void {
    if (!body) return void this.obs.set(`${key}`, "never reported");
    this.obs.set(`${key}.cur_load`, JSON.stringify(body.cur_load));
    this.obs.set(`${key}.num_requests_working`, JSON.stringify(body.num_requests_working));
    this.obs.set(`${key}.working_request_idxs`, this.labelList(body.working_request_idxs));
  }

  private labelList(idxs: unknown): string {
    if (!Array.isArray(idxs)) return JSON.stringify(idxs);
    return `[${idxs.map((i) => this.labels.get(Number(i)) ?? `unknown ${String(i)}`).join(",")}]`;
  }

  /**
   * Ends step `step`: sends the barrier request, waits for its reports, then records what was reported since the
   * previous barrier (sums of the interval counters, the last report, the finished requests).
   */
  async barrier(step: string): Promise<void> {
    const label = `${step}:barrier`;
    const sentAt = Date.now();
    const res = await this.send("/generate/sync", {
      auth_data: this.auth(label),
      payload: { input: { workflow_json: BARRIER_WORKFLOW } },
    });
    if (res.status !== 400) this.obs.set(`${step}.barrier`, `answered ${res.status}, not 400`);
    const idx = [...this.labels].find(([, l]) => l === label)![0];
    const deleted = () =>
      this.deletes(this.windowStart).some((r) =>
        (r.body.requests as { request_idx: number }[]).some((e) => e.request_idx === idx),
      );
    const answeredAt = Date.now();
    const reported = () => this.statuses(sentAt).some((r) => Number(r.body.new_load) > 0);
    // Upstream may lose the barrier's new_load to its counter race (see deliberate.ts): then any status report
    // well after the answer (its 10 s heartbeat at the latest) ends the step as well.
    const reportedLater = () => this.statuses(answeredAt + 200).length > 0;
    try {
      await this.router.waitFor(() => deleted() && reported(), 12_000);
    } catch {
      if (!(deleted() && reportedLater()))
        this.obs.set(`${step}.barrier`, `not reported (deleted ${deleted()}, status ${reported()})`);
    }
    const end = Date.now();
    const statuses = this.statuses(this.windowStart).filter((r) => r.at <= end);
    const sum = (k: string) => statuses.reduce((a, r) => a + Number(r.body[k] ?? 0), 0);
    for (const k of ["new_load", "rej_load", "cur_perf"])
      this.obs.set(`${step}.reports.sum(${k})`, String(sum(k)));
    const last = statuses.at(-1)?.body;
    if (last) {
      this.recordInFlight(`${step}.reports.last`, last);
      const received = Number(last.num_requests_recieved);
      this.obs.set(`${step}.reports.last.num_requests_recieved(+)`, String(received - this.lastReceived));
      this.lastReceived = received;
      this.obs.set(`${step}.reports.last.error_msg`, JSON.stringify(last.error_msg));
      this.obs.set(`${step}.reports.last.max_perf`, JSON.stringify(last.max_perf));
    }
    const entries = this.deletes(this.windowStart)
      .filter((r) => r.at <= end)
      .flatMap((r) => r.body.requests as Record<string, unknown>[])
      .map((e) => ({
        label: this.labels.get(Number(e.request_idx)) ?? `unknown ${String(e.request_idx)}`,
        e,
      }))
      .sort((a, b) => a.label.localeCompare(b.label));
    const seen = new Set<string>();
    for (const { label: l, e } of entries) {
      const key = `${step}.deleted[${l.replace(`${step}:`, "")}]${seen.has(l) ? "(again)" : ""}`;
      seen.add(l);
      this.obs.set(key, describeEntry(e));
    }
    this.windowStart = end + 1;
  }

  /** Waits (finite) until the request labelled `label` was reported finished. */
  async deleted(label: string): Promise<void> {
    const idx = [...this.labels].find(([, l]) => l === label)?.[0];
    const found = () =>
      this.deletes(this.windowStart).some((r) =>
        (r.body.requests as { request_idx: number }[]).some((e) => e.request_idx === idx),
      );
    await this.router.waitFor(found, 15_000).catch(() => this.obs.set(`${label}.deleted`, "never reported"));
  }

  highestReqnum(): number {
    return Math.max(...this.highestReqnums);
  }
}

function describeEntry(e: Record<string, unknown>): string {
  const t = (k: string) => (Number(e[k]) > 0 ? "t" : "0");
  const times = [Number(e.entered_queue_at), Number(e.work_started_at), Number(e.work_completed_at)];
  const set = times.filter((x) => x > 0);
  const ordered = set.every((x, i) => i === 0 || x >= set[i - 1]!);
  return (
    `${String(e.status)} success=${String(e.success)} ` +
    `queued=${t("entered_queue_at")} started=${t("work_started_at")} completed=${t("work_completed_at")}` +
    (ordered ? "" : " (out of order)")
  );
}

/** Ids and times become placeholders; everything else is kept. */
function normaliseBody(body: unknown): unknown {
  if (Array.isArray(body)) return body.map(normaliseBody);
  if (body === null || typeof body !== "object") return body;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(body)) {
    if (["session_id", "removed_session"].includes(k) && typeof v === "string") out[k] = "<session id>";
    else if (["expiration", "created_at"].includes(k) && typeof v === "number") out[k] = "<time>";
    else if (k === "auth_data" && v && typeof v === "object") out[k] = "<the auth_data sent>";
    else if (typeof v === "string") out[k] = v.replace(/session with id \S+/, "session with id <session id>");
    else out[k] = normaliseBody(v);
  }
  return out;
}

/** Keys and value types only (a job's answer holds ids, times and output paths). */
function shape(body: unknown): unknown {
  if (Array.isArray(body)) return body.length > 0 ? [shape(body[0])] : [];
  if (body === null) return null;
  if (typeof body !== "object") return typeof body;
  return Object.fromEntries(Object.entries(body).map(([k, v]) => [k, shape(v)]));
}

/** The scripted traffic, the same for every worker. */
export async function runScenario(run: ScenarioRun): Promise<void> {
  await run.ready();

  // Successes: two jobs, one after the other (reqnums out of order come from the emulator).
  await run.request("success.first", "success:first", { workflow_json: fastWorkflow() });
  await run.request("success.second", "success:second", { workflow_json: fastWorkflow() });
  await run.barrier("success");

  // Envelopes the worker library itself refuses with 422.
  const auth = () => run.auth("envelope:refused");
  run.answer("envelope.no-payload", await run.send("/generate/sync", { auth_data: auth() }));
  run.answer("envelope.no-auth_data", await run.send("/generate/sync", { payload: { input: {} } }));
  run.answer(
    "envelope.auth_data-missing-fields",
    await run.send("/generate/sync", { auth_data: { url: "x", signature: "y" }, payload: { input: {} } }),
  );
  run.answer(
    "envelope.payload-not-object",
    await run.send("/generate/sync", { auth_data: auth(), payload: "x" }),
  );
  run.answer("envelope.invalid-json", await run.send("/generate/sync", "{not json"));
  // A signed envelope whose workflow the wrapper refuses (the 422 comes from behind the worker library).
  await run.request("envelope.bad-workflow", "envelope:bad-workflow", {
    workflow_json: { "1": { inputs: {} } },
  });
  await run.barrier("envelope");

  // Signatures that do not verify: 401 with an empty body.
  const garbage = { ...run.auth("signature:garbage"), signature: "AAAA" };
  run.answer(
    "signature.garbage",
    await run.send("/generate/sync", { auth_data: garbage, payload: { input: {} } }),
  );
  const otherUrl = run.badAuth("signature:other-url");
  run.answer(
    "signature.other-url",
    await run.send("/generate/sync", { auth_data: otherUrl, payload: { input: {} } }),
  );
  await run.barrier("signature");

  // Overload: a job held in flight, then a burst that must be refused with 429.
  const image = await startHeldImage();
  try {
    const slowSent = Date.now();
    const slow = run.request("overload.slow", "overload:slow", {
      workflow_json: heldWorkflow(image, "overload"),
    });
    run.recordInFlight(
      "overload.in-flight-report",
      await run.statusWhere((b) => Number(b.num_requests_working) >= 1, slowSent),
    );
    const burst = await Promise.all(
      [1, 2, 3].map(() =>
        run.send("/generate/sync", {
          auth_data: run.auth("overload:burst"),
          payload: { input: { workflow_json: fastWorkflow() } },
        }),
      ),
    );
    burst.forEach((res, i) => run.answer(`overload.burst${i + 1}`, res));
    image.release();
    await slow;
    await run.barrier("overload");
  } finally {
    await image.stop();
  }

  // A client that goes away while its job runs (held in flight until then).
  const goneImage = await startHeldImage();
  try {
    const abort = new AbortController();
    const goneSent = Date.now();
    const gone = run
      .send(
        "/generate/sync",
        {
          auth_data: run.auth("disconnect:gone"),
          payload: { input: { workflow_json: heldWorkflow(goneImage, "disconnect") } },
        },
        abort.signal,
      )
      .then(
        (res) => `answered ${res.status} before the client left`,
        (err: Error) => `left (${err.name})`,
      );
    run.recordInFlight(
      "disconnect.in-flight-report",
      await run.statusWhere((b) => Number(b.num_requests_working) >= 1, goneSent),
    );
    abort.abort();
    run.obs.set("disconnect.client", String(await gone));
    // What still waits on it (the reference's call to its wrapper goes on) ends now.
    goneImage.release();
    await run.deleted("disconnect:gone");
    // Its cancellation reported before the barrier arrives: upstream nets cancellations against the arrivals of
    // the same report interval, so the barrier's new_load would otherwise depend on timing.
    await run.statusWhere(() => true, Date.now(), 15_000);
    await run.barrier("disconnect");
  } finally {
    await goneImage.stop();
  }
  // The next caller is served (the abandoned job no longer counts against admission). A step of its own: upstream
  // nets cancellations against arrivals of the same report interval, so its new_load depends on timing otherwise.
  await run.request("after-disconnect.next", "after-disconnect:next", { workflow_json: fastWorkflow() });
  await run.barrier("after-disconnect");

  // Sessions: create, get, health, a request inside it, end, and what is left afterwards.
  const sessionAuth = run.auth("session:session");
  const created = await run.send("/session/create", { auth_data: sessionAuth, payload: { lifetime: 60 } });
  run.answer("session.create", created);
  const sessionId = String((JSON.parse(created.text || "{}") as { session_id?: string }).session_id);
  const ref = { session_id: sessionId, session_auth: sessionAuth };
  run.answer("session.get", await run.send("/session/get", ref));
  run.answer(
    "session.get-wrong-auth",
    await run.send("/session/get", { session_id: sessionId, session_auth: {} }),
  );
  run.answer("session.health", await run.send("/session/health", ref));
  await run.request(
    "session.request",
    "session:in-session",
    { workflow_json: fastWorkflow() },
    {
      session_id: sessionId,
    },
  );
  run.answer("session.end", await run.send("/session/end", ref));
  run.answer("session.get-after-end", await run.send("/session/get", ref));
  run.answer("session.end-again", await run.send("/session/end", ref));
  await run.request(
    "session.request-after-end",
    "session:after-end",
    { workflow_json: fastWorkflow() },
    {
      session_id: sessionId,
    },
  );
  // Upstream never checks a signature on /session/create (nor do we, to match): see the report of issue 11.
  const unsignedAuth = run.badAuth("session:unsigned");
  const unsigned = await run.send("/session/create", { auth_data: unsignedAuth, payload: { lifetime: 60 } });
  run.answer("session.create-unsigned", unsigned);
  const unsignedId = String((JSON.parse(unsigned.text || "{}") as { session_id?: string }).session_id);
  run.answer(
    "session.end-unsigned",
    await run.send("/session/end", { session_id: unsignedId, session_auth: unsignedAuth }),
  );
  // A request naming a live session still needs a valid signature.
  const secondAuth = run.auth("session:second");
  const again = await run.send("/session/create", { auth_data: secondAuth, payload: {} });
  const secondId = String((JSON.parse(again.text || "{}") as { session_id?: string }).session_id);
  run.answer(
    "session.request-bad-signature",
    await run.send("/generate/sync", {
      auth_data: run.badAuth("session:bad-signature"),
      payload: { input: { workflow_json: fastWorkflow() } },
      session_id: secondId,
    }),
  );
  await run.send("/session/end", { session_id: secondId, session_auth: secondAuth });
  run.answer("session.create-no-auth_data", await run.send("/session/create", { payload: { lifetime: 60 } }));
  await run.barrier("session");

  // A session that expires: reported in flight meanwhile, then finished, then unknown.
  const expiringAuth = run.auth("expiry:session");
  const expSent = Date.now();
  const exp = await run.send("/session/create", { auth_data: expiringAuth, payload: { lifetime: 1 } });
  const expId = String((JSON.parse(exp.text || "{}") as { session_id?: string }).session_id);
  run.recordInFlight(
    "expiry.open-report",
    await run.statusWhere((b) => Number(b.num_requests_working) >= 1, expSent),
  );
  const expRef = { session_id: expId, session_auth: expiringAuth };
  const deadline = Date.now() + 15_000;
  let health = await run.send("/session/health", expRef);
  while (health.text.includes("true") && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 250));
    health = await run.send("/session/health", expRef);
  }
  run.answer("expiry.health-after-expiry", health);
  await run.request(
    "expiry.request-after-expiry",
    "expiry:after",
    { workflow_json: fastWorkflow() },
    {
      session_id: expId,
    },
  );
  await run.barrier("expiry");

  // Health checks the platform or a caller may make.
  for (const path of ["/health", "/ready"]) {
    const res = await fetch(`${run.target.base}${path}`, { signal: AbortSignal.timeout(TIMEOUT_MS) });
    run.answer(`health.GET ${path}`, {
      status: res.status,
      contentType: res.headers.get("content-type") ?? "",
      text: "",
    });
    await res.arrayBuffer();
  }
  run.answer("health.session-health-missing-id", await run.send("/session/health", {}));
  await run.barrier("health");

  // The plain-HTTP listener: a session created on the routed port, ended there (internal calls); nothing else.
  const plain = (path: string, body: unknown) => run.send(path, body, undefined, run.target.plainHttp);
  const plainAuth = run.auth("plain-http:session");
  const plainSession = await run.send("/session/create", { auth_data: plainAuth, payload: { lifetime: 60 } });
  const plainId = String((JSON.parse(plainSession.text || "{}") as { session_id?: string }).session_id);
  run.answer(
    "plain-http.end-wrong-auth",
    await plain("/session/end", { session_id: plainId, session_auth: {} }),
  );
  run.answer("plain-http.end-no-auth", await plain("/session/end", { session_id: plainId }));
  run.answer("plain-http.end-missing-id", await plain("/session/end", { session_auth: plainAuth }));
  run.answer("plain-http.end-invalid-json", await plain("/session/end", "{not json"));
  run.answer("plain-http.end", await plain("/session/end", { session_id: plainId, session_auth: plainAuth }));
  run.answer(
    "plain-http.get-after-end",
    await run.send("/session/get", { session_id: plainId, session_auth: plainAuth }),
  );
  run.answer(
    "plain-http.end-again",
    await plain("/session/end", { session_id: plainId, session_auth: plainAuth }),
  );
  run.answer(
    "plain-http.session-create",
    await plain("/session/create", { auth_data: run.auth("plain-http:create"), payload: {} }),
  );
  run.answer(
    "plain-http.generate-sync",
    await plain("/generate/sync", { auth_data: run.auth("plain-http:generate"), payload: { input: {} } }),
  );
  await run.barrier("plain-http");

  // Reqnums the router would never hand out again: one far below the highest seen, one already used.
  const stale = { ...run.auth("reqnum:stale"), reqnum: run.highestReqnum() - 5_000 };
  run.answer(
    "reqnum.stale",
    await run.send("/generate/sync", {
      auth_data: stale,
      payload: { input: { workflow_json: fastWorkflow() } },
    }),
    true,
  );
  const once = run.auth("reqnum:replayed");
  for (const attempt of ["first", "again"]) {
    run.answer(
      `reqnum.replayed-${attempt}`,
      await run.send("/generate/sync", {
        auth_data: once,
        payload: { input: { workflow_json: fastWorkflow() } },
      }),
      true,
    );
  }
  await run.barrier("reqnum");
}
