import {
  deepArrays,
  emptyObjects,
  jsonHeaders,
  legacyNestedAuth,
  longSignedUrl,
  sendRaw as send,
  type RawAnswer,
} from "../../benchmark/bench/hostile-requests.js";
import { RouterEmulator } from "../../scripts/router-emulator/emulator.js";
import { startTestWorker, type TestWorker } from "../harness/worker.js";
import { modelFree } from "../harness/workflows.js";

/**
 * Requests that reach the worker's HTTP surface before any job does: who may talk to the local API (a web page the
 * operator has open must not), and what a body may cost before it is authenticated. Performed against a real
 * worker on the real stack (ComfyUI, S3) and the router emulator's real signatures.
 */

let router: RouterEmulator;
/** Signed requests on the routed port; a local API with API_ALLOWED_HOSTS naming one extra host. */
let w: TestWorker;
let localApi: URL;

beforeAll(async () => {
  router = new RouterEmulator({ port: 0 });
  await router.listen();
  w = await startTestWorker(
    { UNSECURED: "false", REPORT_ADDR: router.url, API_ALLOWED_HOSTS: "gpu-box.tunnel" },
    { publicKeyPem: router.publicKeyPem },
  );
  localApi = new URL(w.api);
  await router.waitFor(() => router.workers.has(w.routed));
});

afterAll(async () => {
  await w?.stop();
  await router?.close();
});

const errorOf = (a: RawAnswer): string => (JSON.parse(a.text) as { error: string }).error;

describe("the local API answers its operator only", () => {
  const job = (requestId: string) =>
    JSON.stringify({ input: { request_id: requestId, workflow_json: modelFree() } });

  test("a text/plain POST to /generate (what any web page may send) is 415 and runs nothing", async () => {
    const id = `plain-${Date.now()}`;
    const r = await send(w.api, "/generate", {
      method: "POST",
      headers: { "content-type": "text/plain" },
      body: job(id),
    });
    expect(r.status).toBe(415);
    expect(errorOf(r)).toMatch(/content-type: application\/json/);
    // Also without any content type (curl's -d sends application/x-www-form-urlencoded; a raw client none).
    const none = await send(w.api, "/generate", { method: "POST", body: job(id) });
    expect(none.status).toBe(415);
    expect((await send(w.api, `/result/${id}`)).status).toBe(404);
  });

  test("an unknown path is 404 whatever its content type (its body is not read); a known one's other methods 405", async () => {
    const unknown = await send(w.api, "/nope", {
      method: "POST",
      headers: { "content-type": "text/plain" },
      body: "not JSON",
    });
    expect([unknown.status, JSON.parse(unknown.text)]).toEqual([
      404,
      { error: "no route POST /nope on this port", code: "route_not_found" },
    ]);
    const put = await send(w.api, "/generate", {
      method: "PUT",
      headers: { "content-type": "application/json" },
      body: job(`put-${Date.now()}`),
    });
    expect([put.status, put.headers.allow, errorOf(put)]).toEqual([
      405,
      "POST",
      "/generate takes POST, not PUT",
    ]);
    const head = await send(w.api, "/health", { method: "HEAD" });
    expect(head.status).toBe(200);
  });

  test("a cross-site page's request is 403 on every route: a POST, the event stream, results, metrics", async () => {
    const id = `cross-${Date.now()}`;
    const crossSite: Record<string, string>[] = [
      { origin: "https://evil.example" },
      { origin: "null" },
      // A page on another port of the same machine is another origin.
      { origin: `http://127.0.0.1:${Number(localApi.port) + 1}` },
      { "sec-fetch-site": "cross-site" },
      { "sec-fetch-site": "same-site" },
    ];
    for (const headers of crossSite) {
      const post = await send(w.api, "/generate", {
        method: "POST",
        headers: { "content-type": "application/json", ...headers },
        body: job(id),
      });
      expect([headers, post.status]).toEqual([headers, 403]);
      expect(errorOf(post)).toMatch(/another site's page/);
      for (const path of ["/console/events", `/result/${id}`, "/metrics", "/health", "/"]) {
        const get = await send(w.api, path, { headers });
        expect([headers, path, get.status]).toEqual([headers, path, 403]);
      }
    }
    expect((await send(w.api, `/result/${id}`)).status).toBe(404);
  });

  test("a DNS-rebinding page (its own name in Host) is 421 on every route, the event stream included", async () => {
    for (const host of [
      "evil.example",
      "evil.example:18288",
      `rebind.evil.example:${localApi.port}`,
      "127.0.0.2",
    ]) {
      for (const path of ["/console/events", "/result/anything", "/metrics", "/health", "/"]) {
        const r = await send(w.api, path, { headers: { host } });
        expect([host, path, r.status]).toEqual([host, path, 421]);
        expect(errorOf(r)).toMatch(/API_ALLOWED_HOSTS/);
      }
      const post = await send(w.api, "/generate", {
        method: "POST",
        headers: { host, "content-type": "application/json" },
        body: job(`rebind-${Date.now()}`),
      });
      expect(post.status).toBe(421);
    }
  });

  test("loopback names with any port, API_ALLOWED_HOSTS, the same origin and curl's plain requests pass", async () => {
    const port = localApi.port;
    for (const host of [
      `localhost:${port}`,
      "localhost:9999",
      `127.0.0.1:${port}`,
      `[::1]:${port}`,
      "LOCALHOST",
    ]) {
      expect([host, (await send(w.api, "/health", { headers: { host } })).status]).toEqual([host, 200]);
    }
    expect((await send(w.api, "/health", { headers: { host: "gpu-box.tunnel:8080" } })).status).toBe(200);
    // The operator page's own requests: same origin, through a tunnel to another local port.
    const own = { host: "localhost:9000", origin: "http://localhost:9000", "sec-fetch-site": "same-origin" };
    expect((await send(w.api, "/console/events", { headers: own })).status).toBe(200);
    const post = await send(w.api, "/generate", {
      method: "POST",
      headers: { ...own, "content-type": "application/json; charset=utf-8" },
      body: JSON.stringify({ input: { workflow_json: "nope" } }),
    });
    // 400: past the guard and the body parser, refused by the schema.
    expect(post.status).toBe(400);
    // A typed URL (Sec-Fetch-Site: none) is the operator's own navigation.
    expect((await send(w.api, "/", { headers: { "sec-fetch-site": "none" } })).status).not.toBe(403);
  });
});

describe("cheap requests that would cost much", () => {
  /** `[{},{},...]` just under the routed port's 16 MiB body limit. */
  const hugeEmptyObjects = emptyObjects(16 * 1024 * 1024);

  /**
   * Sends `bodies` to the routed port at once and meanwhile asks /health again and again: the answers, the status
   * of every /health answer, and the most heap used above the start. How fast /health answers meanwhile is a
   * figure, not a claim of this test (it depends on the machine and its load): `BENCH_ONLY=hostile npm run bench`
   * measures it, with the worker's heap and RSS, in BENCHMARKS.md ("Hostile bodies on the routed port").
   */
  async function underAttack(bodies: Buffer[], base = w.routed) {
    global.gc?.();
    const heapBefore = process.memoryUsage().heapUsed;
    let heapPeak = heapBefore;
    let done = false;
    const attacks = Promise.all(
      bodies.map((body) =>
        send(base, "/generate", {
          method: "POST",
          headers: jsonHeaders(body),
          body,
          timeoutMs: 60_000,
        }),
      ),
    ).finally(() => (done = true));
    // The first /health request goes out before any body is answered (`done` turns true in a later turn at the
    // earliest), so there is at least one, and every one was sent while the attack was in flight.
    const health: number[] = [];
    while (!done) {
      health.push((await send(base, "/health", { timeoutMs: 30_000 })).status);
      heapPeak = Math.max(heapPeak, process.memoryUsage().heapUsed);
    }
    return { answers: await attacks, health, heapGrowth: heapPeak - heapBefore };
  }

  /** /health answered, and answered 200, every time it was asked while the bodies arrived. */
  function expectHealthKeptAnswering(health: number[]) {
    expect(health.length).toBeGreaterThan(0);
    expect(health.filter((s) => s !== 200)).toEqual([]);
  }

  test("four concurrent 16 MiB `[{},{},...]` bodies are 413 before auth, /health keeps answering, nothing is parsed", async () => {
    const { answers, health, heapGrowth } = await underAttack([
      hugeEmptyObjects,
      hugeEmptyObjects,
      hugeEmptyObjects,
      hugeEmptyObjects,
    ]);
    for (const a of answers) {
      expect(a.status).toBe(413);
      // Only the byte scanner says this, and a body it refused never reaches the parse.
      expect(errorOf(a)).toMatch(/MAX_JSON_VALUES=250000/);
    }
    expectHealthKeptAnswering(health);
    // Not a memory target (the bench has the worker's heap and RSS under these bodies): a proof that none was
    // materialised, from the gap between the two ways of handling them. A parse of one such body holds its 5.6
    // million objects, about 340 MB of heap (measured: Node 20, 341 MiB); the scan holds a few counters, and the bytes
    // are Buffers, outside the V8 heap. 100 MiB is far from both: a loaded machine changes how many /health requests
    // go out meanwhile (a few KB of short-lived garbage each), not what a parse or a scan holds.
    expect(heapGrowth).toBeLessThan(100 * 1024 * 1024);
  });

  test("a body nested deeper than MAX_JSON_DEPTH is 400 naming the limit", async () => {
    const { answers, health } = await underAttack([deepArrays()]);
    expect(answers[0]!.status).toBe(400);
    expect(errorOf(answers[0]!)).toMatch(/MAX_JSON_DEPTH=64/);
    expectHealthKeptAnswering(health);
  });

  test("a 15 MiB auth_data.url is 401 while /health keeps answering", async () => {
    const body = longSignedUrl(router.authData(w.routed), w.routed);
    const { answers, health } = await underAttack([body, body]);
    for (const a of answers) expect(a.status).toBe(401);
    expectHealthKeptAnswering(health);
  });

  test("under SIGNATURE_LEGACY, a nested or unknown auth_data field is 401 while /health keeps answering", async () => {
    const legacy = await startTestWorker(
      { UNSECURED: "false", REPORT_ADDR: router.url, SIGNATURE_LEGACY: "true" },
      { publicKeyPem: router.publicKeyPem },
    );
    try {
      // 3,000 arrays nested 58 deep, as auth_data.endpoint and as an unknown field: costly to render, not to send.
      const bodies = legacyNestedAuth(router.authData(legacy.routed));
      const { answers, health } = await underAttack(bodies, legacy.routed);
      for (const a of answers) expect(a.status).toBe(401);
      expectHealthKeptAnswering(health);
    } finally {
      await legacy.stop();
    }
  });
});
