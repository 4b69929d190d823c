import { generateKeyPairSync, randomUUID, sign } from "node:crypto";
import { mkdir, mkdtemp, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { RouterEmulator, WORKER_STATUS_FIELDS } from "../../scripts/router-emulator/emulator.js";
import { urlMessage } from "../../worker/auth/signature.js";
import { startHeldImage } from "../harness/http-fixtures.js";
import { stack } from "../harness/stack.js";
import { selfSignedCert } from "../harness/tls.js";
import { vastClientRequest } from "../harness/vast-client.js";
import type { Worker } from "../../worker/app.js";
import { postJson, startTestWorker, type TestWorker } from "../harness/worker.js";
import { fastBenchmarkFile, loadImageWorkflow, modelFree, tinyText2Image } from "../harness/workflows.js";

/** The worker as the Vast side sees it: signed envelopes, reports, admission, the boot benchmark, the client. */

let router: RouterEmulator;
let w: TestWorker;

const securedEnv = async (extra: Record<string, string> = {}) => ({
  UNSECURED: "false",
  REPORT_ADDR: router.url,
  CONTAINER_ID: "7",
  MASTER_TOKEN: "token-7",
  PUBLIC_IPADDR: "127.0.0.1",
  BENCHMARK_SKIP: "false",
  BENCHMARK_JSON_PATH: await fastBenchmarkFile(stack().tmpRoot),
  REPORT_INTERVAL_MS: "100",
  REPORT_HEARTBEAT_MS: "1000",
  ...extra,
});

/** Starts a secured worker whose public URL is its real routed address (so the router sends requests to it). */
async function startSecured(extra: Record<string, string> = {}): Promise<TestWorker> {
  const { createServer } = await import("node:net");
  const probe = createServer().listen(0, "127.0.0.1");
  await new Promise((r) => probe.once("listening", r));
  const port = (probe.address() as { port: number }).port;
  await new Promise((r) => probe.close(r));
  return startTestWorker(
    await securedEnv({ WORKER_PORT: String(port), [`VAST_TCP_PORT_${port}`]: String(port), ...extra }),
  );
}

beforeAll(async () => {
  router = new RouterEmulator({ port: 0 });
  await router.listen();
  w = await startSecured();
});

afterAll(async () => {
  await w?.stop();
  await router?.close();
});

const envelope = (auth: Record<string, unknown>, input: unknown) => ({
  auth_data: auth,
  payload: { input },
  session_id: null,
});

function routerAuth(url: string, overrides: Record<string, unknown> = {}) {
  return { ...router.authData(url, { endpoint: "e" }), ...overrides };
}

test("start-up: public key fetched, benchmark run, ready reported with max_perf and every field", async () => {
  expect(w.worker.phase()).toBe("ready");
  const bench = w.worker.benchmark()!;
  expect(bench.cached).toBe(false);
  expect(bench.source).toMatch(/benchmark\.json$/);
  expect(bench.rounds).toHaveLength(1); // warm-up + one timed run; the score then follows real work
  await router.waitFor(() =>
    router.reports.some((r) => r.path === "/worker_status/" && Number(r.body.max_perf) > 0),
  );
  const report = router.reports
    .filter((r) => r.path === "/worker_status/" && Number(r.body.max_perf) > 0)
    .at(-1)!.body;
  const jsonType = (v: unknown) => (Array.isArray(v) ? "array" : typeof v);
  for (const [k, t] of Object.entries(WORKER_STATUS_FIELDS)) expect([k, jsonType(report[k])]).toEqual([k, t]);
  expect(report).toMatchObject({ id: 7, mtoken: "token-7", version: "1.1.0", error_msg: "", url: w.routed });
  expect(report.max_perf).toBeCloseTo(w.worker.admission.maxPerf, 3);
  expect(report.loadtime).toBeGreaterThan(0);
});

test("the benchmark replaced __RANDOM_INT__ and its cache is reused by the next start", async () => {
  const benchJobs = w.worker.jobs.list().filter((j) => j.id.startsWith("benchmark-"));
  expect(benchJobs).toHaveLength(2); // the warm-up and one timed run
  for (const j of benchJobs) expect(j.history!.prompt[2]).toBeDefined();
  const prefixes = benchJobs.map((j) => (j.history!.prompt[2] as any)["3"].inputs.filename_prefix as string);
  for (const p of prefixes) expect(p).toMatch(/^bench-\d+$/);
  expect(new Set(prefixes).size).toBe(prefixes.length);
});

test("misc/benchmark.json wins over BENCHMARK_JSON_PATH, the score is cached, and a changed benchmark runs again", async () => {
  const root = await mkdtemp(join(stack().tmpRoot, "root-"));
  await mkdir(join(root, "misc"));
  const wf = modelFree();
  wf["3"].inputs.filename_prefix = "misc-bench-__RANDOM_INT__";
  delete wf["4"];
  await writeFile(join(root, "misc", "benchmark.json"), JSON.stringify(wf));
  const cache = join(root, ".has_benchmark");
  const env = await securedEnv({ BENCHMARK_CACHE_FILE: cache, UNSECURED: "true" });
  const first = await startTestWorker(env, { configRoot: root });
  try {
    expect(first.worker.benchmark()).toMatchObject({
      cached: false,
      source: join(root, "misc", "benchmark.json"),
    });
  } finally {
    await first.stop();
  }
  const record = JSON.parse(await readFile(cache, "utf8"));
  expect(record.max_perf).toBeGreaterThan(0);
  const second = await startTestWorker(env, { configRoot: root });
  try {
    expect(second.worker.benchmark()).toMatchObject({ cached: true });
    expect(second.worker.admission.maxPerf).toBe(record.max_perf);
    expect(second.worker.jobs.list()).toHaveLength(0);
  } finally {
    await second.stop();
  }
  wf["1"].inputs.width = 32;
  await writeFile(join(root, "misc", "benchmark.json"), JSON.stringify(wf));
  const third = await startTestWorker(env, { configRoot: root });
  try {
    expect(third.worker.benchmark()).toMatchObject({ cached: false });
  } finally {
    await third.stop();
  }
});

test("a request signed by the router is served; forged and altered ones get 401", async () => {
  const url = w.routed;
  const input = { workflow_json: modelFree() };
  const ok = routerAuth(url);
  const served = await postJson(`${url}/generate/sync`, envelope(ok, input));
  expect(served.status).toBe(200);
  expect(served.body.status).toBe("completed");

  // reqnum is not signed by the url-only scheme, so it gates nothing (see security.test.ts, hole 1).
  const other = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey;
  const forged = routerAuth(url, {
    signature: sign("sha256", Buffer.from(urlMessage(url)), other).toString("base64"),
  });
  expect((await postJson(`${url}/generate/sync`, envelope(forged, input))).status).toBe(401);

  const altered = { ...routerAuth(url), url: "http://203.0.113.9:3000" };
  const a = await postJson(`${url}/generate/sync`, envelope(altered, input));
  expect(a.status).toBe(401);
  expect(a.body).toBeUndefined();

  const missing = routerAuth(url);
  delete (missing as Record<string, unknown>).signature;
  const m = await postJson(`${url}/generate/sync`, envelope(missing, input));
  expect(m.status).toBe(422);
  expect(m.body).toEqual({ auth_data: { signature: "missing parameter" } });
});

test("envelope errors follow upstream: invalid JSON 422, missing fields 422, unknown session 410, bare form refused", async () => {
  const bad = await fetch(`${w.routed}/generate/sync`, { method: "POST", body: "{" });
  expect(bad.status).toBe(422);
  expect(await bad.json()).toEqual({ error: "invalid JSON" });
  const empty = await postJson(`${w.routed}/generate/sync`, {});
  expect(empty).toEqual({ status: 422, body: { auth_data: "field missing", payload: "field missing" } });
  const bare = await postJson(`${w.routed}/generate/sync`, { input: { workflow_json: modelFree() } });
  expect(bare.status).toBe(422);
  const session = await postJson(`${w.routed}/generate/sync`, {
    ...envelope(routerAuth(w.routed), {}),
    session_id: "nope",
  });
  expect(session).toEqual({ status: 410, body: { error: "invalid session" } });
});

test("the official vastai client sends the seed's request through /route/ and gets the result", async () => {
  const res = await vastClientRequest({
    autoscalerUrl: router.url,
    route: "/generate/sync",
    payload: {
      input: {
        request_id: "",
        workflow_json: tinyText2Image(2),
        s3: { access_key_id: "", secret_access_key: "", endpoint_url: "", bucket_name: "", region: "" },
        webhook: { url: "", extra_params: { user_id: "12345", project_id: "abc-def" } },
      },
    },
  });
  expect(res.ok).toBe(true);
  expect(res.status).toBe(200);
  expect(res.response.status).toBe("completed");
  const image = await fetch(res.response.output[0].url);
  expect(image.status).toBe(200);
  expect(router.routes.at(-1)).toMatchObject({ endpoint: "comfyui-local", cost: 100 });
  // This request's own entry (earlier tests' requests, refused ones too, are in the reports as well).
  const idx = router.routed.at(-1)!.request_idx;
  const ours = (r: (typeof router.reports)[number]) =>
    r.path === "/delete_requests/" && (r.body.requests as any[]).some((q) => q.request_idx === idx);
  await router.waitFor(() => router.reports.some(ours));
  const done = router.reports.find(ours)!.body;
  expect(done).toMatchObject({ worker_id: 7, mtoken: "token-7" });
  const entry = (done.requests as any[]).find((q) => q.request_idx === idx);
  expect(entry).toMatchObject({ success: true, status: "Success" });
  expect(entry.work_completed_at).toBeGreaterThanOrEqual(entry.entered_queue_at);
});

test("overload: a busy worker answers 429 and the client re-routes to another", async () => {
  const busy = await startSecured({
    MAX_QUEUE_TIME: "0",
    BENCHMARK_SKIP: "true",
    CONTAINER_ID: "8",
    MASTER_TOKEN: "token-8",
  });
  const input = await startHeldImage();
  try {
    // Busy through its local API (not counted by the router) until the test lets its input download finish.
    const slow = postJson(`${busy.api}/generate/sync`, {
      input: { workflow_json: loadImageWorkflow(input.url(`busy-${randomUUID()}.png`)) },
    });
    await input.requested();
    const direct = await postJson(
      `${busy.routed}/generate/sync`,
      envelope(routerAuth(busy.routed), { workflow_json: modelFree() }),
    );
    expect(direct.status).toBe(429);
    expect(direct.body).toBeUndefined();

    let first = true;
    router.pickOverride = (ready) => {
      const target = first ? ready.find((r) => r.url === busy.routed) : ready.find((r) => r.url === w.routed);
      first = false;
      return target;
    };
    const routedBefore = router.routed.length;
    const res = await vastClientRequest({
      autoscalerUrl: router.url,
      route: "/generate/sync",
      payload: { input: { workflow_json: modelFree() } },
    });
    expect(res.status).toBe(200);
    expect(res.response.status).toBe("completed");
    expect(res.response.output[0].local_path.startsWith(w.outputDir)).toBe(true);
    // The client's request went to the busy worker first, which reported it finished as rejected.
    const idx = router.routed.slice(routedBefore).find((r) => r.url === busy.routed)!.request_idx;
    await router.waitFor(() =>
      router.reports.some(
        (r) =>
          r.path === "/delete_requests/" &&
          r.body.worker_id === 8 &&
          (r.body.requests as any[]).some((q) => q.request_idx === idx && q.status === "Rejected"),
      ),
    );
    input.release();
    expect((await slow).body.status).toBe("completed");
  } finally {
    router.pickOverride = undefined;
    await Promise.all([busy.stop(), input.stop()]);
  }
});

test("UNSECURED: the client's VAST_DEBUG_WORKER_URL auth_data ({request_idx, url}) is served", async () => {
  const open = await startTestWorker({ UNSECURED: "true" });
  try {
    const res = await vastClientRequest({
      route: "/generate/sync",
      payload: { input: { workflow_json: modelFree() } },
      env: { VAST_DEBUG_WORKER_URL: open.routed },
    });
    expect(res.status).toBe(200);
    expect(res.response.status).toBe("completed");
  } finally {
    await open.stop();
  }
});

test("sessions as upstream: create 201, requests extend it, get/health/end, unknown ids", async () => {
  const auth = routerAuth(w.routed);
  const created = await postJson(`${w.routed}/session/create`, {
    auth_data: auth,
    payload: { lifetime: 30 },
  });
  expect(created.status).toBe(201);
  const { session_id, expiration } = created.body;
  expect(session_id).toMatch(/^[A-Za-z0-9]{13}$/);
  // A request in the session reuses the session's auth_data (no replay refusal) and extends it.
  for (let i = 0; i < 2; i++) {
    const res = await postJson(`${w.routed}/generate/sync`, {
      auth_data: auth,
      payload: { input: { workflow_json: modelFree() } },
      session_id,
    });
    expect(res.status).toBe(200);
  }
  const got = await postJson(`${w.routed}/session/get`, { session_id, session_auth: auth });
  expect(got.status).toBe(200);
  expect(got.body.expiration).toBeCloseTo(expiration + 60, 3);
  expect((await postJson(`${w.routed}/session/health`, { session_id, session_auth: auth })).body).toEqual({
    ok: true,
  });
  expect(
    (await postJson(`${w.routed}/session/get`, { session_id, session_auth: { ...auth, url: "x" } })).status,
  ).toBe(401);
  const ended = await postJson(`${w.routed}/session/end`, { session_id, session_auth: auth });
  expect(ended.body).toEqual({ ended: true, removed_session: session_id });
  expect((await postJson(`${w.routed}/session/health`, { session_id, session_auth: auth })).body).toEqual({
    ok: false,
  });
  expect((await postJson(`${w.routed}/session/end`, { session_id, session_auth: auth })).status).toBe(400);
});

test("a port already in use: the worker reports 'Worker Server failed to launch' to the autoscaler", async () => {
  const { createServer } = await import("node:net");
  const taken = createServer().listen(0, "127.0.0.1");
  await new Promise((r) => taken.once("listening", r));
  const port = (taken.address() as { port: number }).port;
  const failure = await startTestWorker({
    REPORT_ADDR: router.url,
    WORKER_PORT: String(port),
    CONTAINER_ID: "99",
    REPORT_HEARTBEAT_MS: "200",
  }).catch((err: Error & { worker: Worker }) => err);
  try {
    expect((failure as Error).message).toMatch(/EADDRINUSE/);
    await router.waitFor(() =>
      router.reports.some(
        (r) =>
          r.path === "/worker_status/" &&
          r.body.id === 99 &&
          /^Worker Server failed to launch: .*EADDRINUSE/.test(String(r.body.error_msg)),
      ),
    );
  } finally {
    await (failure as { worker?: Worker }).worker?.stop(1_000);
    taken.close();
  }
});

test("USE_SSL=true serves the routed port over https with the instance certificate", async () => {
  const dir = await mkdtemp(join(stack().tmpRoot, "tls-"));
  selfSignedCert({ cn: "127.0.0.1", key: join(dir, "key.pem"), crt: join(dir, "crt.pem") });
  const tls = await startTestWorker({
    USE_SSL: "true",
    WORKER_SSL_CERT_FILE: join(dir, "crt.pem"),
    WORKER_SSL_KEY_FILE: join(dir, "key.pem"),
    PUBLIC_IPADDR: "203.0.113.5",
  });
  try {
    expect(tls.routed).toMatch(/^https:/);
    const { get } = await import("node:https");
    const ca = await readFile(join(dir, "crt.pem"));
    const body = await new Promise<string>((resolve, reject) => {
      get(`${tls.routed}/health`, { ca, checkServerIdentity: () => undefined }, (res) => {
        let text = "";
        res.on("data", (d: Buffer) => (text += d.toString()));
        res.on("end", () => resolve(text));
      }).on("error", reject);
    });
    expect(JSON.parse(body)).toEqual({ status: "ok" });
  } finally {
    await tls.stop();
  }
});
