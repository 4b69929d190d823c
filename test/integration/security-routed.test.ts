import { randomUUID } from "node:crypto";
import { RouterEmulator } from "../../scripts/router-emulator/emulator.js";
import { postJson, startTestWorker, type TestWorker } from "../harness/worker.js";
import { modelFree } from "../harness/workflows.js";

/**
 * The routed port's structure, attacked on the real stack (real worker, ComfyUI, S3, the router emulator's
 * signatures): only what its route table declares is answered, sessions are bounded and extended only by signed
 * requests, and refused callers leave no trace in what the autoscaler is told.
 */

let router: RouterEmulator;
let w: TestWorker;
/** The URL the worker advertises (what the router signs for it). */
let own: string;

beforeAll(async () => {
  router = new RouterEmulator({ port: 0 });
  await router.listen();
  w = await startTestWorker(
    { UNSECURED: "false", REPORT_ADDR: router.url, REPORT_INTERVAL_MS: "100", MASTER_TOKEN: "" },
    { publicKeyPem: router.publicKeyPem },
  );
  own = w.routed;
  await router.waitFor(() => router.workers.has(own));
});

afterAll(async () => {
  await w?.stop();
  await router?.close();
});

const envelope = (auth: Record<string, unknown>, input: unknown, sessionId: unknown = null) => ({
  auth_data: auth,
  payload: { input },
  session_id: sessionId,
});

/** auth_data as the router hands it out, with a signature made for another worker: refused with 401. */
const unsignedAuth = (requestIdx?: number) => ({
  ...router.authData(own, requestIdx === undefined ? {} : { requestIdx }),
  signature: router.signUrl("http://127.0.0.1:2"),
});

/** A payload that passes auth and admission and is then refused by the schema: 400 means "auth let it through". */
const notAWorkflow = { workflow_json: "nope" };

async function call(
  method: string,
  url: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; type: string; text: string }> {
  const res = await fetch(url, {
    method,
    headers: { "content-type": "application/json", ...headers },
    ...(body !== undefined && { body: typeof body === "string" ? body : JSON.stringify(body) }),
    signal: AbortSignal.timeout(20_000),
  });
  const text = await res.text();
  return { status: res.status, type: res.headers.get("content-type") ?? "", text };
}

/** A finished job on this worker, submitted through the local API; its id. */
async function realJob(): Promise<string> {
  const id = `routed-${randomUUID()}`;
  const r = await postJson(`${w.api}/generate/sync`, {
    input: { request_id: id, workflow_json: modelFree() },
  });
  expect(r.status).toBe(200);
  return id;
}

describe("the routed port answers only what its route table declares", () => {
  const METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"] as const;

  test("GET /result/<a real job id> without any auth_data is the bare 404; the local API and a signed POST still answer it", async () => {
    const id = await realJob();
    expect((await call("GET", `${w.api}/result/${id}`)).status).toBe(200);
    const unsigned = await call("GET", `${own}/result/${id}`);
    expect([unsigned.status, unsigned.type.split(";")[0], unsigned.text]).toEqual([
      404,
      "text/plain",
      "404: Not Found",
    ]);
    expect(unsigned.text).not.toContain(id);
    const signed = await postJson(`${own}/result/${id}`, envelope(router.authData(own), {}));
    expect([signed.status, signed.body?.id]).toEqual([200, id]);
  });

  test("every method on every known path: declared pairs enforce their auth, everything else is the bare 404", async () => {
    const id = await realJob();
    /**
     * What each declared method+path answers to a caller without valid credentials (a signature made for another
     * worker, no session_auth, no bearer): never 404, never the work itself.
     */
    const declared: Record<string, { body: unknown; status: number[] }> = {
      "GET /health": { body: undefined, status: [200] },
      "GET /ready": { body: undefined, status: [200, 503] },
      "POST /session/create": {
        body: { auth_data: unsignedAuth(), payload: { lifetime: 60 } },
        status: [401],
      },
      "POST /session/get": { body: { session_id: "nope", session_auth: unsignedAuth() }, status: [400] },
      "POST /session/health": { body: { session_id: "nope" }, status: [200] },
      "POST /session/end": { body: { session_id: "nope", session_auth: unsignedAuth() }, status: [400] },
      "POST /pyworker/update": { body: {}, status: [401] },
      "POST /generate/sync": { body: envelope(unsignedAuth(), notAWorkflow), status: [401] },
      "POST /generate": { body: envelope(unsignedAuth(), notAWorkflow), status: [401] },
      "POST /generate/stream": { body: envelope(unsignedAuth(), notAWorkflow), status: [401] },
      [`POST /result/${id}`]: { body: envelope(unsignedAuth(), {}), status: [401] },
      [`POST /cancel/${id}`]: { body: envelope(unsignedAuth(), {}), status: [401] },
    };
    const routedPaths = [...new Set(Object.keys(declared).map((k) => k.split(" ")[1]!))];
    // The local API's routes (and a few near misses): none of them is the routed port's.
    const localPaths = [
      "/",
      "/docs",
      "/docs/",
      "/docs/assets/index.css",
      "/openapi.json",
      "/metrics",
      "/debug/load",
      "/console/events",
      "/console/app.js",
      "/console/style.css",
      "/console/workflows",
      "/console/workflows/x.json",
      `/console/output/${id}/0`,
      "/result",
      "/cancel",
      `/result/${id}/`,
      "/session",
    ];
    const seen: string[] = [];
    for (const path of [...routedPaths, ...localPaths]) {
      for (const method of METHODS) {
        const key = `${method} ${path}`;
        const expected = declared[key];
        const withBody = method !== "GET" && method !== "HEAD";
        // Undeclared pairs get a valid signature and a real job: if any of them reached work, a job would run.
        const body =
          expected?.body ??
          envelope(router.authData(own), { request_id: `walk-${randomUUID()}`, workflow_json: modelFree() });
        const r = await call(method, `${own}${path}`, withBody ? body : undefined);
        if (expected) {
          seen.push(`${key} -> ${expected.status.includes(r.status) ? "as declared" : r.status}`);
        } else {
          const bare = r.status === 404 && (method === "HEAD" || r.text === "404: Not Found");
          seen.push(`${key} -> ${bare ? "404" : `${r.status} ${r.text.slice(0, 80)}`}`);
        }
      }
    }
    const wanted = [...routedPaths, ...localPaths].flatMap((path) =>
      METHODS.map((m) => `${m} ${path} -> ${declared[`${m} ${path}`] ? "as declared" : "404"}`),
    );
    expect(seen).toEqual(wanted);
    expect(w.worker.jobs.list().filter((j) => j.id.startsWith("walk-"))).toEqual([]);
  });
});

describe("session lifetimes are bounded and only signed requests extend them", () => {
  /** A signed /session/create whose lifetime is `lifetime` as written in the JSON text (1e309 parses to Infinity). */
  const create = async (lifetime: string) => {
    const auth = router.authData(own);
    const body = `{"auth_data": ${JSON.stringify(auth)}, "payload": {"lifetime": ${lifetime}}}`;
    return { auth, ...(await call("POST", `${own}/session/create`, body)) };
  };

  test('a lifetime of 1e309 (Infinity), -1, 0 or "x" is a 400; one above SESSION_MAX_LIFETIME_S is clamped to it', async () => {
    for (const lifetime of ["1e309", "-1e309", "-1", "0", '"x"', "[]"]) {
      const r = await create(lifetime);
      expect([lifetime, r.status]).toEqual([lifetime, 400]);
      expect(r.text).toMatch(/lifetime/);
    }
    const before = Date.now() / 1000;
    const long = await create("86400");
    expect(long.status).toBe(201);
    const { session_id, expiration } = JSON.parse(long.text) as { session_id: string; expiration: number };
    expect(expiration).toBeGreaterThanOrEqual(before + 3600);
    expect(expiration).toBeLessThanOrEqual(Date.now() / 1000 + 3600);
    const got = await postJson(`${own}/session/get`, { session_id, session_auth: long.auth });
    expect([got.status, got.body.lifetime]).toEqual([200, 3600]);
    await postJson(`${own}/session/end`, { session_id, session_auth: long.auth });
  });

  test("an unsigned request naming a session does not extend it; a signed one does", async () => {
    const auth = router.authData(own);
    const created = await postJson(`${own}/session/create`, { auth_data: auth, payload: { lifetime: 30 } });
    expect(created.status).toBe(201);
    const sessionId = created.body.session_id as string;
    const expiration = async () =>
      (await postJson(`${own}/session/get`, { session_id: sessionId, session_auth: auth })).body
        .expiration as number;
    const start = await expiration();
    for (let i = 0; i < 20; i++) {
      const r = await postJson(`${own}/generate`, envelope(unsignedAuth(), notAWorkflow, sessionId));
      expect(r.status).toBe(401);
    }
    expect(await expiration()).toBe(start);
    const signed = await postJson(`${own}/generate`, envelope(router.authData(own), notAWorkflow, sessionId));
    expect(signed.status).toBe(400);
    expect(await expiration()).toBe(start + 30);
    await postJson(`${own}/session/end`, { session_id: sessionId, session_auth: auth });
  });
});

describe("refused callers count nothing and report nothing", () => {
  test("200 unsigned requests leave rej_load at 0 and put nothing in /delete_requests/", async () => {
    const since = router.reports.length;
    const idxs = Array.from({ length: 200 }, (_, i) => 900_000_000 + i);
    const paths = ["/generate/sync", "/generate", "/generate/stream", "/result/x", "/cancel/x"];
    for (const [i, idx] of idxs.entries()) {
      const r = await postJson(`${own}${paths[i % paths.length]}`, envelope(unsignedAuth(idx), notAWorkflow));
      expect(r.status).toBe(401);
    }
    // A signed request after them: once its finish is reported, so is everything counted before it.
    const barrier = router.authData(own);
    expect((await postJson(`${own}/generate`, envelope(barrier, notAWorkflow))).status).toBe(400);
    const after = () => router.reports.slice(since);
    await router.waitFor(
      () =>
        after().some(
          (r) =>
            r.path === "/delete_requests/" &&
            (r.body.requests as { request_idx: number }[]).some((e) => e.request_idx === barrier.request_idx),
        ) && after().some((r) => r.path === "/worker_status/" && Number(r.body.new_load) > 0),
      20_000,
    );
    const statuses = after().filter((r) => r.path === "/worker_status/" && r.body.url === own);
    expect(statuses.map((r) => Number(r.body.rej_load)).filter((x) => x !== 0)).toEqual([]);
    const deleted = after()
      .filter((r) => r.path === "/delete_requests/")
      .flatMap((r) => (r.body.requests as { request_idx: number }[]).map((e) => e.request_idx));
    expect(deleted.filter((i) => idxs.includes(i))).toEqual([]);
    expect(deleted).toContain(barrier.request_idx);
  });

  test("unsigned requests inside a session count nothing either", async () => {
    const auth = router.authData(own);
    const created = await postJson(`${own}/session/create`, { auth_data: auth, payload: { lifetime: 30 } });
    expect(created.status).toBe(201);
    const since = router.reports.length;
    for (let i = 0; i < 20; i++) {
      const r = await postJson(
        `${own}/generate/sync`,
        envelope(unsignedAuth(), notAWorkflow, created.body.session_id),
      );
      expect(r.status).toBe(401);
    }
    // Ending the session is reported (a finished request): everything counted before it is reported with it.
    await postJson(`${own}/session/end`, { session_id: created.body.session_id, session_auth: auth });
    await router.waitFor(
      () =>
        router.reports
          .slice(since)
          .some(
            (r) =>
              r.path === "/delete_requests/" &&
              (r.body.requests as { request_idx: number }[]).some((e) => e.request_idx === auth.request_idx),
          ) &&
        router.reports.slice(since).some((r) => r.path === "/worker_status/" && Number(r.body.cur_perf) > 0),
      20_000,
    );
    const rej = router.reports
      .slice(since)
      .filter((r) => r.path === "/worker_status/")
      .map((r) => Number(r.body.rej_load));
    expect(rej.filter((x) => x !== 0)).toEqual([]);
  });
});
