import { RouterEmulator } from "../../scripts/router-emulator/emulator.js";
import { loadConfig } from "../../config/index.js";
import { postJson, stackEnv, startTestWorker, type TestWorker } from "../harness/worker.js";

/**
 * The plain-HTTP port (WORKER_HTTP_PORT), as upstream's worker library serves it beside the routed port: POST
 * /session/end without TLS, for internal calls, with the routed port's session_auth check and answers; nothing
 * else. On the real stack, with sessions the router emulator signs.
 */

let router: RouterEmulator;
let w: TestWorker;
/** The routed URL the worker advertises (what the router signs for it). */
let own: string;
let plain: string;

beforeAll(async () => {
  router = new RouterEmulator({ port: 0 });
  await router.listen();
  w = await startTestWorker(
    { UNSECURED: "false", REPORT_ADDR: router.url, REPORT_INTERVAL_MS: "100" },
    { publicKeyPem: router.publicKeyPem },
  );
  own = w.routed;
  plain = w.worker.plainHttpUrl()!;
  await router.waitFor(() => router.workers.has(own));
});

afterAll(async () => {
  await w?.stop();
  await router?.close();
});

async function call(
  method: string,
  url: string,
  body?: unknown,
): Promise<{ status: number; type: string; text: string }> {
  const res = await fetch(url, {
    method,
    headers: { "content-type": "application/json" },
    ...(body !== undefined && { body: typeof body === "string" ? body : JSON.stringify(body) }),
    signal: AbortSignal.timeout(20_000),
  });
  const text = await res.text();
  return { status: res.status, type: res.headers.get("content-type")?.split(";")[0] ?? "", text };
}

async function createSession(): Promise<{ id: string; auth: Record<string, unknown> }> {
  const auth = router.authData(own);
  const created = await postJson(`${own}/session/create`, { auth_data: auth, payload: { lifetime: 60 } });
  expect(created.status).toBe(201);
  return { id: created.body.session_id as string, auth };
}

test("WORKER_HTTP_PORT is WORKER_PORT + 1 unless set, and any free port with WORKER_PORT=0", () => {
  const env = { ...stackEnv("/tmp/out"), UNSECURED: "true" };
  expect(loadConfig({ ...env, WORKER_PORT: "3000" }).plainHttp.port).toBe(3001);
  expect(loadConfig({ ...env, WORKER_PORT: "3000", WORKER_HTTP_PORT: "4000" }).plainHttp.port).toBe(4000);
  expect(loadConfig({ ...env, WORKER_PORT: "0" }).plainHttp.port).toBe(0);
  expect(() => loadConfig({ ...env, WORKER_HTTP_PORT: "http" })).toThrow(/WORKER_HTTP_PORT/);
});

test("a session created on the routed port ends over plain HTTP with its session_auth, and only with it", async () => {
  expect(plain).not.toBe(own);
  const { id, auth } = await createSession();
  const wrong = await call("POST", `${plain}/session/end`, {
    session_id: id,
    session_auth: { ...auth, signature: "someone else's" },
  });
  expect([wrong.status, JSON.parse(wrong.text)]).toEqual([401, { error: "session_auth is not valid" }]);
  const none = await call("POST", `${plain}/session/end`, { session_id: id });
  expect(none.status).toBe(401);
  // Still open: the refused calls ended nothing.
  const alive = await postJson(`${own}/session/health`, { session_id: id, session_auth: auth });
  expect(alive.body).toEqual({ ok: true });

  const ended = await call("POST", `${plain}/session/end`, { session_id: id, session_auth: auth });
  expect([ended.status, JSON.parse(ended.text)]).toEqual([200, { ended: true, removed_session: id }]);
  const gone = await postJson(`${own}/session/get`, { session_id: id, session_auth: auth });
  expect(gone.status).toBe(400);
  const again = await call("POST", `${plain}/session/end`, { session_id: id, session_auth: auth });
  expect([again.status, JSON.parse(again.text)]).toEqual([400, { error: `session with id ${id} not found` }]);
  // The end is reported as the routed port's is: the session's request finished.
  await router.waitFor(() =>
    router.reports.some(
      (r) =>
        r.path === "/delete_requests/" &&
        (r.body.requests as { request_idx: number }[]).some((e) => e.request_idx === auth.request_idx),
    ),
  );
});

test("the same answers as the routed port's /session/end for what is malformed", async () => {
  for (const body of [{}, { session_auth: {} }, "{not json", { session_id: "no-such-session" }]) {
    const a = await call("POST", `${plain}/session/end`, body);
    const b = await call("POST", `${own}/session/end`, body);
    expect(a).toEqual(b);
    expect(a.status).toBeGreaterThanOrEqual(400);
  }
});

test("anything else on the plain-HTTP port is the bare 404", async () => {
  const { id, auth } = await createSession();
  const signed = { auth_data: router.authData(own), payload: { input: {} } };
  const probes: [string, string, unknown?][] = [
    ["GET", "/session/end"],
    ["PUT", "/session/end", { session_id: id, session_auth: auth }],
    ["POST", "/session/create", { auth_data: router.authData(own), payload: {} }],
    ["POST", "/session/get", { session_id: id, session_auth: auth }],
    ["POST", "/session/health", { session_id: id, session_auth: auth }],
    ["POST", "/generate/sync", signed],
    ["POST", "/pyworker/update", {}],
    ["GET", "/health"],
    ["GET", "/ready"],
    ["GET", "/metrics"],
    ["GET", "/"],
    ["GET", "/docs"],
    ["POST", "/session/end/"],
  ];
  for (const [method, path, body] of probes) {
    const r = await call(method, `${plain}${path}`, body);
    expect([method, path, r.status, r.type, r.text]).toEqual([
      method,
      path,
      404,
      "text/plain",
      "404: Not Found",
    ]);
  }
  // None of them touched the session.
  const alive = await postJson(`${own}/session/health`, { session_id: id, session_auth: auth });
  expect(alive.body).toEqual({ ok: true });
  await call("POST", `${plain}/session/end`, { session_id: id, session_auth: auth });
});

test("it starts and closes with the worker's other listeners", async () => {
  const other = await startTestWorker();
  const url = other.worker.plainHttpUrl()!;
  expect((await call("POST", `${url}/session/end`, {})).status).toBe(422);
  await other.stop();
  expect(other.worker.plainHttpUrl()).toBeUndefined();
  await expect(call("POST", `${url}/session/end`, {})).rejects.toThrow();
});
