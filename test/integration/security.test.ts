import { createPrivateKey, randomBytes, randomUUID, sign } from "node:crypto";
import { lookup } from "node:dns/promises";
import { existsSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import { request as httpRequest } from "node:http";
import { hostname } from "node:os";
import { dirname, join } from "node:path";
import { RouterEmulator } from "../../scripts/router-emulator/emulator.js";
import { isBlockedAddress } from "../../handlers/preprocess/address-policy.js";
import { ObjectStorage, resolveS3 } from "../../handlers/storage/s3.js";
import { signatureHeaders } from "../../handlers/webhook.js";
import { RecordingServer, type Received } from "../harness/http-fixtures.js";
import { captureLog } from "../harness/log-capture.js";
import { stack } from "../harness/stack.js";
import { postJson, repoRoot, startTestWorker, type TestWorker } from "../harness/worker.js";
import { legacyMessages } from "../../worker/auth/signature.js";
import { modelFree } from "../harness/workflows.js";

/**
 * Issue 9: each attack of the security review, performed against a real worker (real ComfyUI, real S3, the router
 * emulator's real signatures), and what shows it did no harm.
 */

/** The worker's log, for the tests that look for leaked secrets. */
const log = captureLog();
const logLines = log.lines;

let router: RouterEmulator;
let hooks: RecordingServer;
let w: TestWorker;
/** The URL the worker advertises in /worker_status/ (what the router signs for it). */
let own: string;

beforeAll(async () => {
  router = new RouterEmulator({ port: 0 });
  await router.listen();
  hooks = await new RecordingServer().start();
  w = await startTestWorker(
    {
      UNSECURED: "false",
      REPORT_ADDR: router.url,
      REPORT_INTERVAL_MS: "100",
      WEBHOOK_ALLOW_PRIVATE: "false",
      WEBHOOK_URL: `${hooks.url}/operator/T000/SECRET-TOKEN-PATH`,
      WEBHOOK_MAX_ATTEMPTS: "2",
      MASTER_TOKEN: "",
    },
    { publicKeyPem: router.publicKeyPem, logger: log.logger },
  );
  own = w.routed;
  await router.waitFor(() => router.workers.has(own));
});

afterAll(async () => {
  await w?.stop();
  await router?.close();
  await hooks?.stop();
});

const envelope = (auth: Record<string, unknown>, input: unknown, sessionId: unknown = null) => ({
  auth_data: auth,
  payload: { input },
  session_id: sessionId,
});

/** A payload that passes auth and admission and is then refused by the schema: 400 means "auth let it through". */
const notAWorkflow = { workflow_json: "nope" };

describe("hole 1: reqnum is not signed and must not gate requests", () => {
  test("one validly signed request with reqnum edited to 1e15 does not lock out later requests", async () => {
    const poisoned = { ...router.authData(own), reqnum: 1e15 };
    expect((await postJson(`${own}/generate`, envelope(poisoned, notAWorkflow))).status).toBe(400);
    for (let i = 0; i < 3; i++) {
      const next = await postJson(`${own}/generate`, envelope(router.authData(own), notAWorkflow));
      expect(next.status).toBe(400);
    }
    // Negative, repeated, non-numeric: none of it is signed, none of it matters.
    for (const reqnum of [-5, 1, 1, "x", null]) {
      const r = await postJson(
        `${own}/generate`,
        envelope({ ...router.authData(own), reqnum }, notAWorkflow),
      );
      expect([reqnum, r.status]).toEqual([reqnum, 400]);
    }
  });

  test("under SIGNATURE_LEGACY=true (reqnum signed) a bounded replay window stays", async () => {
    const keys = join(repoRoot, "test", "fixtures", "keys");
    const privateKey = createPrivateKey(await readFile(join(keys, "router-private.pem"), "utf8"));
    const legacy = await startTestWorker(
      { UNSECURED: "false", REPORT_ADDR: router.url, SIGNATURE_LEGACY: "true", REQNUM_REPLAY_WINDOW: "10" },
      { publicKeyPem: await readFile(join(keys, "router-public.pem"), "utf8") },
    );
    try {
      const url = legacy.routed;
      /** Signs every field but `signature`, as the legacy router did. */
      const legacyAuth = (reqnum: number) => {
        const fields = { url, cost: 100, endpoint: "e", reqnum, request_idx: reqnum };
        const [message] = legacyMessages(fields);
        return {
          ...fields,
          signature: sign("sha256", Buffer.from(message!, "utf8"), privateKey).toString("base64"),
        };
      };
      const send = async (auth: Record<string, unknown>) =>
        (await postJson(`${url}/generate`, envelope(auth, notAWorkflow))).status;
      expect(await send(legacyAuth(100))).toBe(400);
      expect(await send(legacyAuth(100))).toBe(401); // replayed
      expect(await send(legacyAuth(80))).toBe(401); // older than the window
      expect(await send(legacyAuth(95))).toBe(400); // inside it
      // An edited (unsigned) reqnum breaks the legacy signature: it cannot move the window.
      expect(await send({ ...legacyAuth(101), reqnum: 1e15 })).toBe(401);
      expect(await send(legacyAuth(102))).toBe(400);
    } finally {
      await legacy.stop();
    }
  });
});

describe("hole 2: a signature made for another worker", () => {
  test("is refused with 401; this worker's own URL (trailing slash or not) passes", async () => {
    for (const other of ["http://127.0.0.1:1", "http://10.0.0.8:3000", own.replace("http:", "https:")]) {
      const r = await postJson(`${own}/generate`, envelope(router.authData(other), notAWorkflow));
      expect([other, r.status]).toEqual([other, 401]);
    }
    expect(
      (await postJson(`${own}/generate`, envelope(router.authData(`${own}/`), notAWorkflow))).status,
    ).toBe(400);
    expect(logLines.join("")).toMatch(/not this worker/);
  });

  test("the router emulator hands out exactly the URL the worker reported", async () => {
    // Other workers of this file report to the same router: route to this one.
    const reported = router.reports.filter((r) => r.path === "/worker_status/").map((r) => r.body.url);
    expect(reported).toContain(own);
    router.pickOverride = (ready) => ready.find((r) => r.url === own);
    await router.waitFor(() => router.pick() !== undefined);
    const res = await fetch(`${router.url}/route/`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ endpoint: "e", cost: 100 }),
      signal: AbortSignal.timeout(10_000),
    });
    router.pickOverride = undefined;
    const auth = (await res.json()) as Record<string, unknown>;
    expect(auth.url).toBe(own);
  });

  test("AUTH_CHECK_URL=false lets a signature for another URL through (for unusual networks)", async () => {
    const loose = await startTestWorker(
      { UNSECURED: "false", REPORT_ADDR: router.url, AUTH_CHECK_URL: "false" },
      { publicKeyPem: router.publicKeyPem },
    );
    try {
      const r = await postJson(
        `${loose.routed}/generate`,
        envelope(router.authData("http://10.9.9.9:1"), notAWorkflow),
      );
      expect(r.status).toBe(400);
    } finally {
      await loose.stop();
    }
  });
});

describe("hole 3: path traversal through caller-chosen names", () => {
  test("a node id of ../../ with core PreviewAny writes only inside the job's folder", async () => {
    const escapeName = `escape-${randomUUID()}`;
    const nodeId = `../../${escapeName}`;
    const id = `trav-${randomUUID()}`;
    const r = await postJson(
      `${own}/generate/sync`,
      envelope(router.authData(own), {
        request_id: id,
        workflow_json: {
          "1": { class_type: "PrimitiveString", inputs: { value: "pwned" } },
          [nodeId]: { class_type: "PreviewAny", inputs: { source: ["1", 0] } },
        },
      }),
    );
    expect(r.status).toBe(200);
    expect(r.body.status).toBe("completed");
    const text = r.body.output.find((o: any) => o.text === "pwned");
    expect(text).toBeDefined();
    expect(text.node_id).toBe(nodeId);
    const jobDir = join(w.outputDir, id);
    expect(dirname(text.local_path)).toBe(jobDir);
    expect(text.filename).not.toContain("/");
    // Where the unsanitised name would have landed: two levels above the job's folder.
    const above = dirname(dirname(jobDir));
    expect((await readdir(above)).filter((n) => n.startsWith(escapeName))).toEqual([]);
    expect(existsSync(join(above, `${escapeName}_text_0.txt`))).toBe(false);
    // The S3 key is the sanitised name under the job's id.
    expect(new URL(text.url).pathname).toBe(`/${stack().s3Bucket}/${id}/${text.filename}`);
  });

  test("a request_id that climbs is a 400", async () => {
    for (const request_id of ["../x", "a/b", "..", ".hidden", "a\\b"]) {
      const r = await postJson(
        `${own}/generate`,
        envelope(router.authData(own), { request_id, workflow_json: modelFree() }),
      );
      expect([request_id, r.status]).toEqual([request_id, 400]);
    }
  });
});

describe("hole 4: the operator's S3 keys stay with the operator's bucket", () => {
  test("an endpoint, bucket or region override without the caller's own keys is a 400 naming the field, and nothing is sent", async () => {
    const evil = await new RecordingServer().start();
    try {
      const cases: [Record<string, string>, RegExp][] = [
        [{ endpoint_url: evil.url }, /s3\.access_key_id/],
        [{ bucket_name: "someone-elses" }, /s3\.access_key_id/],
        [{ region: "eu-west-3" }, /s3\.access_key_id/],
        [{ endpoint_url: evil.url, access_key_id: "mine" }, /s3\.secret_access_key/],
      ];
      for (const [s3, field] of cases) {
        const id = `s3-${randomUUID()}`;
        const r = await postJson(
          `${own}/generate`,
          envelope(router.authData(own), { request_id: id, workflow_json: modelFree(), s3 }),
        );
        expect([s3, r.status]).toEqual([s3, 400]);
        expect(r.body.error ?? r.body.message).toMatch(field);
        expect(w.worker.jobs.get(id)).toBeUndefined();
      }
      expect(evil.received).toEqual([]);
    } finally {
      await evil.stop();
    }
  });

  test("with the caller's own keys the upload goes to the caller's endpoint, signed with the caller's key only", async () => {
    // A loopback endpoint stands in for the caller's server: this worker allows private addresses (the default of
    // the test harness), the address policy itself is tested under hole 5.
    const open = await startTestWorker();
    const evil = await new RecordingServer().start();
    try {
      const r = await postJson(`${open.api}/generate/sync`, {
        input: {
          workflow_json: modelFree(),
          s3: { endpoint_url: evil.url, access_key_id: "CALLERKEY", secret_access_key: "caller-secret" },
        },
      });
      expect(r.status).toBe(200);
      expect(evil.received.length).toBeGreaterThan(0);
      const operatorKey = stack().s3AccessKeyId;
      for (const req of evil.received) {
        expect(String(req.headers.authorization)).toContain("Credential=CALLERKEY/");
        expect(JSON.stringify(req.headers)).not.toContain(operatorKey);
      }
    } finally {
      await evil.stop();
      await open.stop();
    }
  });

  test("the per-credential client cache is bounded (LRU)", async () => {
    const s = stack();
    const storage = new ObjectStorage({
      forcePathStyle: true,
      partSizeBytes: 5 * 1024 * 1024,
      presignExpirySeconds: 60,
      uploadTimeoutMs: 10_000,
      maxClients: 3,
    });
    try {
      for (let i = 0; i < 8; i++) {
        const target = resolveS3(
          { endpointUrl: s.s3Endpoint, bucketName: s.s3Bucket, region: s.s3Region },
          { accessKeyId: `key-${i}`, secretAccessKey: `secret-${i}` },
        )!;
        // Unknown keys: the real S3 refuses them; the client was made all the same.
        await expect(storage.probe(target)).rejects.toThrow(/bucket/);
        expect(storage.clientCount).toBeLessThanOrEqual(3);
      }
      expect(storage.clientCount).toBe(3);
    } finally {
      storage.close();
    }
  });
});

describe("hole 5: caller-chosen webhook and callback URLs (SSRF)", () => {
  test("a webhook to ComfyUI's /interrupt, to cloud metadata or to loopback is refused with 400 and no job runs", async () => {
    const targets = [
      `${stack().comfyUrl}/interrupt`,
      "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
      `${hooks.url}/internal`,
      "http://[::1]:18188/interrupt",
      "http://[::ffff:127.0.0.1]:18188/interrupt",
      "http://localhost:18188/interrupt",
      "http://2130706433:18188/interrupt",
      "http://user:pw@example.com/hook",
    ];
    const before = hooks.received.length;
    for (const url of targets) {
      const id = `ssrf-${randomUUID()}`;
      const r = await postJson(
        `${own}/generate`,
        envelope(router.authData(own), { request_id: id, workflow_json: modelFree(), webhook: { url } }),
      );
      expect([url, r.status]).toEqual([url, 400]);
      expect(r.body.error ?? r.body.message).toMatch(/webhook\.url/);
      expect(w.worker.jobs.get(id)).toBeUndefined();
    }
    expect(hooks.received.length).toBe(before);
  });

  test("a host name that resolves to loopback passes submission but is refused at connect time", async () => {
    const name = hostname();
    // The attack needs a name that resolves to a blocked address; this machine's own name does here.
    const addresses = await lookup(name, { all: true });
    expect(addresses.length).toBeGreaterThan(0);
    expect(addresses.every((a) => isBlockedAddress(a.address))).toBe(true);
    const port = new URL(hooks.url).port;
    const before = hooks.received.length;
    const id = `dns-${randomUUID()}`;
    const r = await postJson(
      `${own}/generate/sync`,
      envelope(router.authData(own), {
        request_id: id,
        workflow_json: modelFree(),
        webhook: { url: `http://${name}:${port}/internal` },
      }),
    );
    expect(r.status).toBe(200);
    // The operator's own WEBHOOK_URL is trusted and is delivered; the caller's never reached the loopback server.
    await log.waitFor(new RegExp(`"request_id":"${id}".*refused: .*resolves to`));
    expect(hooks.received.slice(before).filter((h) => h.url === "/internal")).toEqual([]);
  });

  test("a caller's s3.endpoint_url gets the same policy: 400 for a literal private address, refused at connect time for a name", async () => {
    const evil = await new RecordingServer().start();
    try {
      const keys = { access_key_id: "CALLERKEY", secret_access_key: "caller-secret" };
      for (const endpoint_url of [evil.url, "http://169.254.169.254", "http://[::1]:9"]) {
        const id = `s3ssrf-${randomUUID()}`;
        const r = await postJson(
          `${own}/generate`,
          envelope(router.authData(own), {
            request_id: id,
            workflow_json: modelFree(),
            s3: { endpoint_url, ...keys },
          }),
        );
        expect([endpoint_url, r.status]).toEqual([endpoint_url, 400]);
        expect(r.body.error ?? r.body.message).toMatch(/s3\.endpoint_url/);
      }
      const byName = `http://${hostname()}:${new URL(evil.url).port}`;
      const r = await postJson(
        `${own}/generate/sync`,
        envelope(router.authData(own), { workflow_json: modelFree(), s3: { endpoint_url: byName, ...keys } }),
      );
      // The caller's endpoint is refused at connect time: a client mistake (4xx), never retried.
      expect(r.status).toBe(424);
      expect(r.body.status).toBe("failed");
      expect(r.body.error.code).toBe("upload_rejected");
      for (const o of r.body.output) expect(o.upload_error).toMatch(/resolves to .*not allowed/);
      expect(evil.received).toEqual([]);
    } finally {
      await evil.stop();
    }
  });

  test("the operator's own WEBHOOK_URL (loopback here) is trusted", async () => {
    const before = hooks.received.length;
    const id = `op-${randomUUID()}`;
    const r = await postJson(
      `${own}/generate/sync`,
      envelope(router.authData(own), { request_id: id, workflow_json: modelFree() }),
    );
    expect(r.status).toBe(200);
    const hook = await waitForHook((h) => h.url.startsWith("/operator/") && JSON.parse(h.body).id === id);
    expect(hooks.received.indexOf(hook)).toBeGreaterThanOrEqual(before);
  });

  test("a session on_close_route to metadata or loopback is refused at /session/create with 400", async () => {
    for (const on_close_route of [
      "http://169.254.169.254/latest",
      `${hooks.url}/closed`,
      "file:///etc/passwd",
    ]) {
      const r = await postJson(`${own}/session/create`, {
        auth_data: router.authData(own),
        payload: { lifetime: 5, on_close_route },
      });
      expect([on_close_route, r.status]).toEqual([on_close_route, 400]);
      expect(r.body.error ?? r.body.message).toMatch(/on_close_route/);
    }
  });
});

describe("hole 6: secrets in logs", () => {
  test("webhook URLs are logged as scheme, host and port only", async () => {
    hooks.handler = (_req, res) => void res.writeHead(500).end();
    try {
      const before = hooks.received.length;
      const r = await postJson(
        `${own}/generate/sync`,
        envelope(router.authData(own), { workflow_json: modelFree() }),
      );
      expect(r.status).toBe(200);
      // WEBHOOK_MAX_ATTEMPTS=2: both attempts fail and are logged.
      await hooks.waitFor(before + 2);
      await log.waitFor(/webhook answered 500; giving up/);
    } finally {
      hooks.handler = (_req, res) => void res.end("ok");
    }
    const text = logLines.join("");
    expect(text).toContain(`"url":"${hooks.url}"`);
    expect(text).not.toContain("SECRET-TOKEN-PATH");
    expect(text).not.toContain("/operator/T000");
  });
});

describe("the operator's webhook secret signs only the operator's webhook", () => {
  test("a delivery to a caller-chosen URL is never signed with WEBHOOK_SECRET; the caller's own secret signs it", async () => {
    const operatorSecret = `whsec_${randomBytes(24).toString("base64")}`;
    const callerSecret = `whsec_${randomBytes(24).toString("base64")}`;
    const receiver = await new RecordingServer().start();
    const signer = await startTestWorker({ WEBHOOK_SECRET: operatorSecret });
    try {
      const deliveries = [];
      for (const [path, secret] of [
        ["/no-secret", undefined],
        ["/own-secret", callerSecret],
      ] as const) {
        const r = await postJson(`${signer.api}/generate/sync`, {
          input: {
            workflow_json: modelFree(),
            webhook: { url: `${receiver.url}${path}`, ...(secret && { secret }) },
          },
        });
        expect(r.body.status).toBe("completed");
        await receiver.waitFor(deliveries.length + 1);
        deliveries.push(receiver.received.find((h) => h.url === path)!);
      }
      const v1 = (h: Received, secret: string) =>
        signatureHeaders(String(h.headers["webhook-id"]), Number(h.headers["webhook-timestamp"]), h.body, {
          secret,
        })["webhook-signature"]!;
      const [plain, signed] = deliveries as [Received, Received];
      expect(plain.headers["webhook-signature"]).toBeUndefined();
      expect(signed.headers["webhook-signature"]).toBe(v1(signed, callerSecret));
      expect(signed.headers["webhook-signature"]).not.toBe(v1(signed, operatorSecret));
    } finally {
      await signer.stop();
      await receiver.stop();
    }
  });
});

describe("hole 7: route spelling", () => {
  test("/GENERATE/SYNC, /generate/sync/ and friends are 404 on both ports and run nothing", async () => {
    const jobsBefore = w.worker.jobs.list().length;
    for (const path of ["/GENERATE/SYNC", "/generate/sync/", "/Generate", "/generate/", "/generate/STREAM"]) {
      const id = `spell-${randomUUID()}`;
      const input = { request_id: id, workflow_json: modelFree() };
      const routed = await fetch(`${own}${path}`, {
        method: "POST",
        body: JSON.stringify(envelope(router.authData(own), input)),
        signal: AbortSignal.timeout(10_000),
      });
      await routed.arrayBuffer();
      const local = await fetch(`${w.api}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ input }),
        signal: AbortSignal.timeout(10_000),
      });
      await local.arrayBuffer();
      expect([path, routed.status, local.status]).toEqual([path, 404, 404]);
      expect(w.worker.jobs.get(id)).toBeUndefined();
    }
    expect(w.worker.jobs.list().length).toBe(jobsBefore);
  });
});

describe("hole 8: tokens", () => {
  test("with MASTER_TOKEN unset, /pyworker/update refuses an empty or any bearer", async () => {
    for (const authorization of ["Bearer ", "", "Bearer x", "Bearer undefined"]) {
      const r = await fetch(`${own}/pyworker/update`, {
        method: "POST",
        headers: authorization ? { authorization } : {},
        body: "{}",
        signal: AbortSignal.timeout(10_000),
      });
      await r.arrayBuffer();
      expect([authorization, r.status]).toEqual([authorization, 401]);
    }
  });

  test("with MASTER_TOKEN set, only that token passes", async () => {
    const t = await startTestWorker(
      { UNSECURED: "false", REPORT_ADDR: router.url, MASTER_TOKEN: "tok-123" },
      { publicKeyPem: router.publicKeyPem },
    );
    try {
      const call = async (authorization: string) => {
        const r = await fetch(`${t.routed}/pyworker/update`, {
          method: "POST",
          headers: { authorization },
          signal: AbortSignal.timeout(10_000),
        });
        await r.arrayBuffer();
        return r.status;
      };
      expect(await call("Bearer tok-12")).toBe(401);
      expect(await call("Bearer tok-1234")).toBe(401);
      expect(await call("Bearer tok-123")).toBe(200);
    } finally {
      await t.stop();
    }
  });

  test("/session/create needs the router's signature for this worker (upstream creates sessions for anyone)", async () => {
    const forged = { ...router.authData(own), signature: router.signUrl("http://127.0.0.1:2") };
    const other = router.authData("http://127.0.0.1:2");
    for (const auth_data of [forged, other, { url: own }]) {
      const r = await postJson(`${own}/session/create`, { auth_data, payload: { lifetime: 1e9 } });
      expect(r.status).toBe(401);
    }
  });

  test("session auth is compared by value, whatever the key order", async () => {
    const auth = router.authData(own);
    const created = await postJson(`${own}/session/create`, { auth_data: auth, payload: { lifetime: 5 } });
    expect(created.status).toBe(201);
    const reordered = Object.fromEntries(Object.entries(auth).reverse());
    expect(JSON.stringify(reordered)).not.toBe(JSON.stringify(auth));
    const got = await postJson(`${own}/session/get`, {
      session_id: created.body.session_id,
      session_auth: reordered,
    });
    expect(got.status).toBe(200);
    const wrong = await postJson(`${own}/session/get`, {
      session_id: created.body.session_id,
      session_auth: { ...auth, reqnum: -1 },
    });
    expect(wrong.status).toBe(401);
    await postJson(`${own}/session/end`, { session_id: created.body.session_id, session_auth: auth });
  });
});

describe("hole 9: unauthenticated requests and the load picture", () => {
  test("a 401 with a huge workflow adds nothing to rej_load (see security-routed.test.ts for the flood)", async () => {
    const huge = modelFree();
    huge["9"] = { class_type: "EmptyLatentImage", inputs: { width: 16384, height: 16384, batch_size: 64 } };
    huge["8"] = { class_type: "KSampler", inputs: { steps: 10_000, latent_image: ["9", 0] } };
    const seenBefore = router.reports.length;
    const forged = { ...router.authData(own), signature: router.signUrl("http://127.0.0.1:2") };
    const r = await postJson(`${own}/generate/sync`, envelope(forged, { workflow_json: huge }));
    expect(r.status).toBe(401);
    // A signed request after it: once its finish is reported, so is everything counted before it.
    const barrier = router.authData(own);
    expect((await postJson(`${own}/generate`, envelope(barrier, notAWorkflow))).status).toBe(400);
    await router.waitFor(() =>
      router.reports
        .slice(seenBefore)
        .some(
          (x) =>
            x.path === "/delete_requests/" &&
            (x.body.requests as { request_idx: unknown }[]).some(
              (e) => e.request_idx === barrier.request_idx,
            ),
        ),
    );
    const rej = router.reports
      .slice(seenBefore)
      .filter((x) => x.path === "/worker_status/" && x.body.url === own)
      .map((x) => Number(x.body.rej_load));
    expect(rej.filter((x) => x !== 0)).toEqual([]);
  });
});

describe("hole 10: the routed port's body limit", () => {
  test("a declared 20 MiB body is answered 413 before it is sent", async () => {
    const url = new URL(`${own}/generate/sync`);
    const status = await new Promise<number>((resolve, reject) => {
      const req = httpRequest(
        {
          host: url.hostname,
          port: url.port,
          path: url.pathname,
          method: "POST",
          headers: { "content-type": "application/json", "content-length": String(20 * 1024 * 1024) },
          timeout: 10_000,
        },
        (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        },
      );
      req.on("error", reject);
      req.on("timeout", () => req.destroy(new Error("no early answer")));
      // Only the first kilobyte is ever sent: the answer must not wait for the rest.
      req.write("{".padEnd(1024, " "));
    });
    expect(status).toBe(413);
  });

  test("a chunked body above the limit is cut off with 413", async () => {
    const big = JSON.stringify({ auth_data: {}, payload: { pad: "x".repeat(17 * 1024 * 1024) } });
    const body = new ReadableStream({
      start(c) {
        c.enqueue(new TextEncoder().encode(big));
        c.close();
      },
    });
    const r = await fetch(`${own}/generate/sync`, {
      method: "POST",
      body,
      duplex: "half",
      signal: AbortSignal.timeout(30_000),
    } as RequestInit);
    expect(r.status).toBe(413);
    expect(((await r.json()) as any).error).toMatch(/ROUTED_MAX_BODY_BYTES=16777216/);
  });
});

/** The first webhook received that matches, waiting for more as they arrive (at most 20 s). */
async function waitForHook(match: (h: Received) => boolean): Promise<Received> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const hit = hooks.received.find(match);
    if (hit) return hit;
    const left = deadline - Date.now();
    if (left <= 0) throw new Error("no matching webhook arrived");
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      hooks.waitFor(hooks.received.length + 1),
      new Promise((r) => (timer = setTimeout(r, left))),
    ]);
    clearTimeout(timer);
  }
}
