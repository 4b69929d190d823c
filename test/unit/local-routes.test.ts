import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { request, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Express, RequestHandler } from "express";
import { docsRoutes, SWAGGER_UI_FILES } from "../../worker/http/docs.js";
import { createLocalApp } from "../../worker/http/local.js";
import { LOCAL_ROUTES, routeKey, type LocalRouteKey } from "../../worker/http/route-table.js";

/**
 * The local API port as its route table builds it: the handlers behind it are fakes that record what reached them,
 * so that the table, the operator guard and the body policy are judged by what gets through.
 */

interface Reached {
  key: string;
  method: string;
  path: string;
  body: unknown;
}

const MAX_BODY_BYTES = 64 * 1024;

function localApp(handlers: Partial<Record<LocalRouteKey, RequestHandler>> = {}) {
  const reached: Reached[] = [];
  const fake =
    (key: string): RequestHandler =>
    (req, res) => {
      reached.push({ key, method: req.method, path: req.path, body: req.body as unknown });
      res.json({ reached: key });
    };
  const all = Object.fromEntries(LOCAL_ROUTES.map((r) => [routeKey(r), fake(routeKey(r))])) as Record<
    LocalRouteKey,
    RequestHandler
  >;
  const app = createLocalApp({
    maxBodyBytes: MAX_BODY_BYTES,
    jsonShape: { maxDepth: 32, maxValues: 10_000 },
    allowedHosts: [],
    handlers: { ...all, ...handlers },
  });
  return { app, reached };
}

let open: Server[] = [];
afterEach(async () => {
  await Promise.all(open.map((s) => new Promise((r) => s.close(r))));
  open = [];
});

async function serve(app: Express): Promise<string> {
  const server = app.listen(0, "127.0.0.1");
  await new Promise<void>((resolve, reject) => {
    server.once("listening", resolve);
    server.once("error", reject);
  });
  open.push(server);
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

interface Answer {
  status: number;
  body: string;
  headers: Record<string, string | string[] | undefined>;
}

/** A raw request (any method, any body, any headers) with a deadline; resolves once the whole answer is read. */
function send(
  base: string,
  method: string,
  path: string,
  opts: { body?: string; headers?: Record<string, string> } = {},
): Promise<Answer> {
  return new Promise<Answer>((resolve, reject) => {
    const req = request(
      `${base}${path}`,
      { method, agent: false, headers: opts.headers, signal: AbortSignal.timeout(10_000) },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({
            status: res.statusCode ?? 0,
            body: Buffer.concat(chunks).toString("utf8"),
            headers: res.headers,
          }),
        );
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(opts.body);
  });
}

const JSON_HEADERS = { "content-type": "application/json" };
const codeOf = (a: Answer) => (JSON.parse(a.body) as { code: string }).code;
/** A concrete path for a declared one (`:id` filled in). */
const concrete = (path: string) => path.replace(/:(\w+)/g, (_m, name: string) => `${name}-1`);

describe("the local API's route table", () => {
  test("declares each method and path once", () => {
    const keys = LOCAL_ROUTES.map(routeKey);
    expect(new Set(keys).size).toBe(keys.length);
  });

  test("every declared route reaches its own handler with its method (HEAD too for a GET), JSON routes with the body", async () => {
    const { app, reached } = localApp();
    const base = await serve(app);
    for (const route of LOCAL_ROUTES) {
      const key = routeKey(route);
      const path = concrete(route.path);
      const a =
        route.body === "json"
          ? await send(base, route.method, path, { body: '{"input": {"x": 1}}', headers: JSON_HEADERS })
          : await send(base, route.method, path);
      expect([key, a.status, a.body]).toEqual([key, 200, JSON.stringify({ reached: key })]);
      expect(reached.at(-1)).toEqual({
        key,
        method: route.method,
        path,
        body: route.body === "json" ? { input: { x: 1 } } : undefined,
      });
      if (route.method === "GET") {
        const head = await send(base, "HEAD", path);
        expect([key, head.status]).toEqual([key, 200]);
      }
    }
  });

  test("an unknown POST path is 404 whatever its content type; its body is never read", async () => {
    const { app, reached } = localApp();
    const base = await serve(app);
    for (const headers of [{ "content-type": "text/plain" }, JSON_HEADERS, {}]) {
      const a = await send(base, "POST", "/nope", { body: "not json at all", headers });
      expect([headers, a.status, codeOf(a)]).toEqual([headers, 404, "route_not_found"]);
    }
    for (const path of ["/GENERATE", "/generate/", "/generate/sync/", "/console", "/result"]) {
      const a = await send(base, "POST", path, { body: "{}", headers: JSON_HEADERS });
      expect([path, a.status, codeOf(a)]).toEqual([path, 404, "route_not_found"]);
    }
    expect((await send(base, "GET", "/nope")).status).toBe(404);
    expect(reached).toEqual([]);
  });

  test("a declared JSON route sent text/plain (what any web page may send) is 415 and reaches nothing", async () => {
    const { app, reached } = localApp();
    const base = await serve(app);
    for (const route of LOCAL_ROUTES.filter((r) => r.body === "json")) {
      const path = concrete(route.path);
      const a = await send(base, route.method, path, {
        body: "{}",
        headers: { "content-type": "text/plain" },
      });
      expect([path, a.status, codeOf(a)]).toEqual([path, 415, "unsupported_media_type"]);
    }
    expect(reached).toEqual([]);
  });

  test("a declared path asked with an undeclared method is 405 naming the methods it takes in Allow", async () => {
    const { app, reached } = localApp();
    const base = await serve(app);
    const cases: [string, string, string][] = [
      ["PUT", "/generate", "POST"],
      ["GET", "/generate/sync", "POST"],
      ["HEAD", "/generate/stream", "POST"],
      ["DELETE", "/result/x", "GET, HEAD, POST"],
      ["POST", "/health", "GET, HEAD"],
      ["OPTIONS", "/metrics", "GET, HEAD"],
      ["PATCH", "/console/events", "GET, HEAD"],
    ];
    for (const [method, path, allow] of cases) {
      const a = await send(base, method, path, { body: "{}", headers: { "content-type": "text/plain" } });
      expect([method, path, a.status, a.headers.allow]).toEqual([method, path, 405, allow]);
      if (method !== "HEAD") expect(codeOf(a)).toBe("method_not_allowed");
    }
    expect(reached).toEqual([]);
  });

  test("the operator guard comes first: a foreign Host or Origin is refused on unknown paths too", async () => {
    const { app, reached } = localApp();
    const base = await serve(app);
    const rebinding = await send(base, "POST", "/nope", {
      body: "x",
      headers: { host: "evil.example", "content-type": "text/plain" },
    });
    expect([rebinding.status, codeOf(rebinding)]).toEqual([421, "misdirected_request"]);
    const crossSite = await send(base, "PUT", "/generate", { headers: { origin: "https://evil.example" } });
    expect([crossSite.status, codeOf(crossSite)]).toEqual([403, "cross_site_request"]);
    expect(reached).toEqual([]);
  });

  test("a JSON body above MAX_BODY_BYTES is 413 naming the limit", async () => {
    const { app, reached } = localApp();
    const base = await serve(app);
    const big = JSON.stringify({ input: { pad: "x".repeat(MAX_BODY_BYTES) } });
    const a = await send(base, "POST", "/generate", { body: big, headers: JSON_HEADERS });
    expect([a.status, codeOf(a)]).toEqual([413, "payload_too_large"]);
    expect(a.body).toMatch(/MAX_BODY_BYTES=65536/);
    expect(reached).toEqual([]);
  });
});

describe("the /docs assets route", () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "local-routes-"));
    for (const file of SWAGGER_UI_FILES) writeFileSync(join(dir, file), `/* fake ${file} */`);
    writeFileSync(join(dir, "other.js"), "/* not one the page loads */");
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  test("serves only the files the page loads, never a path the request names", async () => {
    const { app } = localApp(docsRoutes({}, dir));
    const base = await serve(app);
    for (const file of SWAGGER_UI_FILES) {
      const a = await send(base, "GET", `/docs/assets/${file}`);
      expect([file, a.status, a.body]).toEqual([file, 200, `/* fake ${file} */`]);
    }
    for (const path of [
      "/docs/assets/other.js",
      "/docs/assets/..%2Fother.js",
      "/docs/assets/..%2F..%2Fpackage.json",
    ]) {
      expect([path, (await send(base, "GET", path)).status]).toEqual([path, 404]);
    }
    expect((await send(base, "GET", "/docs/")).status).toBe(200);
    expect(JSON.parse((await send(base, "GET", "/openapi.json")).body)).toMatchObject({ openapi: "3.0.3" });
  });
});
