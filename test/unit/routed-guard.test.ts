import { request, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import type { Express, RequestHandler } from "express";
import { Admission } from "../../worker/admission.js";
import { ReplayGuard, type AuthData, type SignatureVerifier } from "../../worker/auth/signature.js";
import {
  PLAIN_HTTP_ROUTES,
  ROUTED_ROUTES,
  routeKey,
  type RoutedRouteKey,
} from "../../worker/http/route-table.js";
import { SessionStore, createRoutedApp, type RoutedDeps } from "../../worker/http/routed.js";
import { RequestTracker } from "../../worker/reporter/tracker.js";
import { silentLogger } from "./fakes.js";

const ADVERTISED = "https://worker.invalid:3000";
const GOOD = "fake-good-signature";

/** The router's key, faked: one signature verifies (under the url-only scheme), every other is refused. */
const fakeVerifier = {
  scheme: (auth: AuthData) => (auth.signature === GOOD ? "url" : undefined),
} as unknown as SignatureVerifier;

/** What the routes behind the guard saw: the guard is judged by what reaches them. */
interface Reached {
  method: string;
  path: string;
}

type Routes = Parameters<typeof createRoutedApp>[1];

function routedApp(overrides: Partial<RoutedDeps> = {}, routes: Routes = ROUTED_ROUTES) {
  const reached: Reached[] = [];
  const fakeHandler: RequestHandler = (req, res) => {
    reached.push({ method: req.method, path: req.path });
    res.json({ reached: req.path });
  };
  // The same fake behind every declared route: the generation and health handlers included.
  const fakeHandlers = Object.fromEntries(ROUTED_ROUTES.map((r) => [routeKey(r), fakeHandler])) as Record<
    RoutedRouteKey,
    RequestHandler
  >;
  const tracker = new RequestTracker();
  const sessions = new SessionStore(4, tracker, () => undefined, 600);
  const deps: RoutedDeps = {
    logger: silentLogger(),
    maxBodyBytes: 64 * 1024,
    jsonShape: { maxDepth: 32, maxValues: 10_000 },
    unsecured: false,
    legacySignatures: false,
    advertisedUrl: ADVERTISED,
    checkUrl: true,
    checkCallbackUrl: () => undefined,
    verifier: () => fakeVerifier,
    replay: new ReplayGuard(1_000),
    admission: new Admission(30, () => 0),
    tracker,
    sessions,
    sessionMaxLifetimeS: 600,
    masterToken: "fake-master-token",
    updateFlagFile: "/nonexistent/.force_update",
    generate: fakeHandlers,
    health: fakeHandlers,
    models: fakeHandlers,
    workloadOf: () => 100,
    ...overrides,
  };
  return { app: createRoutedApp(deps, routes), reached, tracker, sessions };
}

/** Listens on an ephemeral loopback port for one test. */
async function listen(app: Express): Promise<{ url: string; server: Server }> {
  const server = app.listen(0, "127.0.0.1");
  await new Promise<void>((resolve, reject) => {
    server.once("listening", resolve);
    server.once("error", reject);
  });
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

interface Answer {
  status: number;
  body: string;
  type: string | undefined;
}

/** A raw request (any method, any body) with a deadline; resolves once the whole answer is read. */
function send(
  base: string,
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
) {
  const text = body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body);
  return new Promise<Answer>((resolve, reject) => {
    const req = request(
      `${base}${path}`,
      {
        method,
        // A connection per request: an answer sent before its body was read (the 404) closes the connection.
        agent: false,
        headers: { ...(text !== undefined && { "content-type": "application/json" }), ...headers },
        signal: AbortSignal.timeout(10_000),
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({
            status: res.statusCode ?? 0,
            body: Buffer.concat(chunks).toString("utf8"),
            type: res.headers["content-type"],
          }),
        );
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(text);
  });
}

const auth = (extra: Record<string, unknown> = {}) => ({
  cost: 100,
  endpoint: "fake-endpoint",
  reqnum: 1,
  request_idx: 7,
  signature: GOOD,
  url: ADVERTISED,
  ...extra,
});
const envelope = (extra: Record<string, unknown> = {}, payload: unknown = { input: {} }) => ({
  auth_data: auth(extra),
  payload,
});

let open: Server[] = [];
afterEach(async () => {
  await Promise.all(open.map((s) => new Promise((r) => s.close(r))));
  open = [];
});
async function serve(overrides: Partial<RoutedDeps> = {}, routes: Routes = ROUTED_ROUTES) {
  const made = routedApp(overrides, routes);
  const { url, server } = await listen(made.app);
  open.push(server);
  return { ...made, url };
}

const BARE_404 = { status: 404, body: "404: Not Found" };

describe("the routed guard", () => {
  test("an undeclared method or path is the bare 404, and reaches no handler", async () => {
    const { url, reached } = await serve();
    const probes: [string, string][] = [
      ["GET", "/generate/sync"],
      ["GET", "/result/abc"],
      ["HEAD", "/health"],
      ["OPTIONS", "/generate"],
      ["PUT", "/generate"],
      ["POST", "/health"],
      ["GET", "/metrics"],
      ["GET", "/docs"],
      ["POST", "/Generate"],
      ["POST", "/generate/"],
      ["POST", "/result/"],
      ["POST", "/nothing"],
    ];
    for (const [method, path] of probes) {
      const answer = await send(url, method, path, method === "HEAD" ? undefined : envelope());
      expect({
        method,
        path,
        status: answer.status,
        body: method === "HEAD" ? BARE_404.body : answer.body,
      }).toEqual({
        method,
        path,
        ...BARE_404,
      });
      if (method !== "HEAD") expect(answer.type).toMatch(/^text\/plain/);
    }
    expect(reached).toEqual([]);
  });

  test("every declared route is answered by its handler or its auth policy, never the 404", async () => {
    const { url } = await serve();
    for (const route of ROUTED_ROUTES) {
      const path = route.path.replace(":id", "abc");
      const answer = await send(url, route.method, path, route.method === "POST" ? {} : undefined);
      expect({ route: `${route.method} ${path}`, status: answer.status }).not.toEqual({
        route: `${route.method} ${path}`,
        status: 404,
      });
    }
  });

  test("a signed envelope passes to its handler and is tracked as work", async () => {
    const { url, reached, tracker } = await serve();
    const answer = await send(url, "POST", "/generate/sync", envelope());
    expect(answer.status).toBe(200);
    expect(JSON.parse(answer.body)).toEqual({ reached: "/generate/sync" });
    expect(reached).toEqual([{ method: "POST", path: "/generate/sync" }]);
    expect(tracker.counters.received).toBe(100);
    const read = await send(url, "POST", "/result/abc", envelope());
    expect(read.status).toBe(200);
    // Reading a result is not work: it moves nothing the autoscaler hears.
    expect(tracker.counters.received).toBe(100);
  });

  test("an unsigned or badly signed envelope is 401 with an empty body; the handler and the tracker see nothing", async () => {
    const { url, reached, tracker } = await serve();
    for (const body of [
      envelope({ signature: "forged" }),
      envelope({ signature: "" }),
      envelope({ url: "https://another-worker.invalid:3000" }),
    ]) {
      const answer = await send(url, "POST", "/generate", body);
      expect(answer).toMatchObject({ status: 401, body: "" });
    }
    expect(reached).toEqual([]);
    expect(tracker.counters).toEqual({ received: 0, cancelled: 0, rej_load: 0, cur_perf: 0 });
    expect(tracker.workingRequestIdxs()).toEqual([]);
    expect(tracker.pending).toBe(false);
  });

  test("a signed request over the admission limit is 429 with an empty body, counted as rejected, not run", async () => {
    const { url, reached, tracker } = await serve({ admission: new Admission(30, () => 1_000) });
    const answer = await send(url, "POST", "/generate", envelope());
    expect(answer).toMatchObject({ status: 429, body: "" });
    expect(reached).toEqual([]);
    expect(tracker.counters).toMatchObject({ received: 0, rej_load: 100 });
    expect(tracker.finished).toMatchObject([{ request_idx: 7, status: "Rejected", success: false }]);
  });

  test("before the router's key is known, signed routes answer 503 not_ready (retried), reaching nothing", async () => {
    const { url, reached } = await serve({ verifier: () => undefined });
    const res = await send(url, "POST", "/generate", envelope());
    expect(res.status).toBe(503);
    expect(JSON.parse(res.body)).toMatchObject({ code: "not_ready" });
    expect(reached).toEqual([]);
  });

  test("a path whose percent-encoding does not decode is the caller's mistake: 400, never a 500", async () => {
    const { url, reached } = await serve();
    const bad = await send(url, "POST", "/result/%ZZ", envelope());
    expect(bad.status).toBe(400);
    expect(JSON.parse(bad.body)).toMatchObject({ code: "bad_request" });
    expect(reached).toEqual([]);
  });

  test("an envelope with missing fields is 422 naming them; a session that does not exist is 410", async () => {
    const { url, reached } = await serve();
    const missing = await send(url, "POST", "/generate", { payload: {} });
    expect(missing.status).toBe(422);
    expect(JSON.parse(missing.body)).toEqual({ auth_data: "field missing" });
    const partial = await send(url, "POST", "/generate", { auth_data: { url: ADVERTISED }, payload: [] });
    expect(partial.status).toBe(422);
    expect(JSON.parse(partial.body)).toMatchObject({
      auth_data: { signature: "missing parameter", reqnum: "missing parameter" },
      payload: { data: "payload must be a dictionary" },
    });
    const gone = await send(url, "POST", "/generate", { ...envelope(), session_id: "no-such-session" });
    expect(gone.status).toBe(410);
    expect(reached).toEqual([]);
  });

  test("a declared Content-Length above ROUTED_MAX_BODY_BYTES is 413 before a byte of the body is sent, and closes", async () => {
    const { url, reached } = await serve();
    // Only the headers go out: the answer must not wait for the body.
    const answer = await new Promise<{ status: number; body: string; connection: string | undefined }>(
      (resolve, reject) => {
        const req = request(`${url}/generate/sync`, {
          method: "POST",
          agent: false,
          headers: { "content-type": "application/json", "content-length": String(64 * 1024 + 1) },
          signal: AbortSignal.timeout(10_000),
        });
        req.on("response", (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => {
            req.destroy();
            resolve({
              status: res.statusCode ?? 0,
              body: Buffer.concat(chunks).toString("utf8"),
              connection: res.headers.connection,
            });
          });
        });
        req.on("error", reject);
        req.flushHeaders();
      },
    );
    expect(answer).toEqual({
      status: 413,
      body: JSON.stringify({
        error: "request body is larger than ROUTED_MAX_BODY_BYTES=65536",
        code: "payload_too_large",
      }),
      connection: "close",
    });
    expect(reached).toEqual([]);
  });

  test("the plain-HTTP app answers only /session/end", async () => {
    const { url } = await serve({}, PLAIN_HTTP_ROUTES);
    expect(await send(url, "POST", "/generate", envelope())).toMatchObject(BARE_404);
    expect(await send(url, "GET", "/health")).toMatchObject(BARE_404);
    const end = await send(url, "POST", "/session/end", { session_id: "none" });
    expect(end.status).toBe(400);
  });
});

describe("routed sessions", () => {
  test("a lifetime above SESSION_MAX_LIFETIME_S is clamped to it; the session is then found and ended", async () => {
    const { url, sessions, tracker } = await serve();
    const before = Date.now() / 1000;
    const created = await send(url, "POST", "/session/create", {
      auth_data: auth(),
      payload: { lifetime: 86_400 },
    });
    expect(created.status).toBe(201);
    const { session_id, expiration } = JSON.parse(created.body) as { session_id: string; expiration: number };
    expect(expiration).toBeGreaterThanOrEqual(before + 600);
    expect(expiration).toBeLessThanOrEqual(Date.now() / 1000 + 600);
    expect(sessions.sessions.get(session_id)!.lifetime).toBe(600);
    // An open session is a request in flight, as upstream reports it.
    expect(tracker.workingRequestIdxs()).toEqual([7]);

    const sessionAuth = auth();
    const got = await send(url, "POST", "/session/get", { session_id, session_auth: sessionAuth });
    expect(JSON.parse(got.body)).toMatchObject({ session_id, lifetime: 600 });
    const wrong = await send(url, "POST", "/session/get", {
      session_id,
      session_auth: { ...sessionAuth, signature: "forged" },
    });
    expect(wrong.status).toBe(401);

    const ended = await send(url, "POST", "/session/end", { session_id, session_auth: sessionAuth });
    expect(JSON.parse(ended.body)).toEqual({ ended: true, removed_session: session_id });
    expect(sessions.sessions.size).toBe(0);
    expect(tracker.workingRequestIdxs()).toEqual([]);
  });

  test("an unsigned /session/create is 401 and holds no slot; a bad lifetime is 400", async () => {
    const { url, sessions } = await serve();
    const unsigned = await send(url, "POST", "/session/create", {
      auth_data: auth({ signature: "forged" }),
      payload: { lifetime: 60 },
    });
    expect(unsigned).toMatchObject({ status: 401, body: "" });
    const bad = await send(url, "POST", "/session/create", { auth_data: auth(), payload: { lifetime: -1 } });
    expect(bad.status).toBe(400);
    expect(sessions.sessions.size).toBe(0);
  });
});
