import fc from "fast-check";
import { RouterEmulator } from "../../scripts/router-emulator/emulator.js";
import { parseGenerateInput } from "../../worker/schema.js";
import { WorkerError } from "../../lib/errors.js";
import { startTestWorker, type TestWorker } from "../harness/worker.js";
import { modelFree } from "../harness/workflows.js";

/**
 * Property-based fuzzing of the request parser and the routed envelope: whatever arrives gets a 4xx or a valid
 * answer, never a crash or a 5xx (the Vast client would retry a 5xx forever).
 */

const jsonish = fc.jsonValue({ maxDepth: 4 });
const nodeLike = fc.record(
  {
    class_type: fc.oneof(fc.string(), fc.constantFrom("SaveImage", "EmptyImage", "LoadImage")),
    inputs: fc.dictionary(fc.string(), jsonish),
  },
  { requiredKeys: [] },
);
const inputLike = fc.record(
  {
    request_id: fc.oneof(fc.string(), fc.constantFrom("", "../x", "a/b", "ok-id", "..", ".hidden"), jsonish),
    workflow_json: fc.oneof(fc.dictionary(fc.string(), nodeLike, { maxKeys: 4 }), jsonish),
    s3: fc.oneof(fc.dictionary(fc.string(), jsonish), jsonish),
    // Webhook URLs stay on loopback or reserved addresses: a fuzzed job must never call a real host.
    webhook: fc.oneof(
      fc.record(
        {
          url: fc.oneof(
            fc.constantFrom(
              "http://127.0.0.1:9/hook",
              "http://169.254.169.254/latest/meta-data/",
              "http://[::1]:9/x",
              "ftp://127.0.0.1/x",
              "http://user:pw@127.0.0.1:9/",
              "not a url",
            ),
            jsonish,
          ),
        },
        { requiredKeys: [] },
      ),
      jsonish,
    ),
  },
  { requiredKeys: [] },
);
const payloadLike = fc.oneof(
  jsonish,
  fc.record({ input: fc.oneof(inputLike, jsonish) }, { requiredKeys: [] }),
);

test("parseGenerateInput: 10,000 payloads give a parsed request or a 4xx WorkerError, never anything else", () => {
  fc.assert(
    fc.property(payloadLike, (payload) => {
      try {
        const parsed = parseGenerateInput(payload, { maxWorkflowNodes: 50 });
        expect(parsed.requestId).toMatch(/^[A-Za-z0-9][A-Za-z0-9._-]*$/);
        expect(parsed.requestId).not.toContain("..");
      } catch (err) {
        expect(err).toBeInstanceOf(WorkerError);
        const status = (err as WorkerError).httpStatus;
        expect(status >= 400 && status < 500).toBe(true);
      }
    }),
    { numRuns: 10_000 },
  );
});

describe("over HTTP", () => {
  let secured: TestWorker;
  let router: RouterEmulator;
  beforeAll(async () => {
    router = new RouterEmulator({ port: 0 });
    await router.listen();
    secured = await startTestWorker(
      { UNSECURED: "false", REPORT_ADDR: router.url },
      { publicKeyPem: router.publicKeyPem },
    );
  });
  afterAll(async () => {
    await secured?.stop();
    await router?.close();
  });

  const send = async (url: string, body: string) => {
    const res = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
      signal: AbortSignal.timeout(30_000),
    });
    await res.arrayBuffer();
    return res.status;
  };

  /** An HTTP status: an integer in 100..599 (what fetch may hand back at all). */
  const isHttpStatus = (status: number) => Number.isInteger(status) && status >= 100 && status <= 599;

  test("the routed envelope: 2,000 arbitrary bodies get a 4xx, never a 5xx", async () => {
    const envelopeLike = fc.oneof(
      jsonish,
      fc.record(
        {
          auth_data: fc.oneof(
            jsonish,
            fc.record({
              url: fc.string(),
              signature: fc.string(),
              reqnum: jsonish,
              cost: jsonish,
              endpoint: jsonish,
              request_idx: jsonish,
            }),
          ),
          payload: payloadLike,
          session_id: fc.oneof(fc.constant(null), fc.string(), jsonish),
        },
        { requiredKeys: [] },
      ),
    );
    const bodies = fc.oneof(
      envelopeLike.map((v) => JSON.stringify(v) ?? "null"),
      fc.string(),
    );
    await fc.assert(
      fc.asyncProperty(
        bodies,
        fc.constantFrom(
          "/generate/sync",
          "/generate",
          "/generate/stream",
          "/result/x",
          "/cancel/x",
          "/session/create",
          "/session/get",
          "/session/end",
        ),
        async (body, path) => {
          const status = await send(`${secured.routed}${path}`, body);
          expect([isHttpStatus(status), path, body]).toEqual([true, path, body]);
          if (path === "/session/create") expect([status < 500, body]).toEqual([true, body]);
          else expect([status >= 400 && status < 500, body]).toEqual([true, body]);
        },
      ),
      { numRuns: 2_000 },
    );
  });

  test("signed envelopes: 1,000 arbitrary payloads pass auth and reach the handlers, which answer 2xx or 4xx (never 401, never 5xx)", async () => {
    // The router's real signature for this worker's URL, so the fuzz reaches the schema, ComfyUI's validation and
    // the jobs, not only the 401 path.
    const signed = fc.record({
      payload: payloadLike,
      reqnum: jsonish,
      cost: jsonish,
      request_idx: jsonish,
      endpoint: jsonish,
    });
    const reached = new Map<number, number>();
    await fc.assert(
      fc.asyncProperty(
        signed,
        fc.constantFrom("/generate/sync", "/generate", "/result/x", "/cancel/x"),
        async ({ payload, ...fields }, path) => {
          const auth = { ...router.authData(secured.routed), ...fields };
          const body = JSON.stringify({ auth_data: auth, payload, session_id: null });
          const status = await send(`${secured.routed}${path}`, body);
          reached.set(status, (reached.get(status) ?? 0) + 1);
          expect([isHttpStatus(status), body]).toEqual([true, body]);
          expect([status !== 401 && status < 500, status, body]).toEqual([true, status, body]);
        },
      ),
      { numRuns: 1_000 },
    );
    // The schema refused most (400); unknown jobs are 404: both prove the handlers ran, not the auth check.
    expect(reached.get(400) ?? 0).toBeGreaterThan(0);
    expect(reached.get(404) ?? 0).toBeGreaterThan(0);
  }, 300_000);

  test("the local API: 300 arbitrary requests reach ComfyUI's validation and get a 4xx or a valid answer", async () => {
    const base = modelFree();
    const mutated = fc.record({
      node: fc.constantFrom("1", "2", "3", "4"),
      key: fc.oneof(
        fc.constantFrom("width", "height", "image", "images", "filename_prefix", "blur_radius"),
        fc.string(),
      ),
      // Numbers stay small: a valid 16384x16384 image is a fine answer but takes minutes on a CPU.
      value: fc.oneof(
        fc.integer({ min: -10, max: 64 }),
        fc.string(),
        fc.constant(null),
        fc.boolean(),
        fc.array(fc.string(), { maxLength: 3 }),
      ),
    });
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          payloadLike.map((p) => JSON.stringify(p) ?? "null"),
          mutated.map(({ node, key, value }) => {
            const wf = structuredClone(base);
            (wf[node].inputs as Record<string, unknown>)[key] = value;
            return JSON.stringify({ input: { workflow_json: wf } });
          }),
        ),
        async (body) => {
          const status = await send(`${secured.api}/generate/sync`, body);
          expect([isHttpStatus(status), body]).toEqual([true, body]);
          expect([status === 200 || (status >= 400 && status < 500), status, body]).toEqual([
            true,
            status,
            body,
          ]);
        },
      ),
      { numRuns: 300 },
    );
  }, 300_000);
});
