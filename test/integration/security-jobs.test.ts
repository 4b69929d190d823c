import { spawn } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { mkdtemp } from "node:fs/promises";
import { createServer, type Server, type ServerResponse } from "node:http";
import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import nacl from "tweetnacl";
import { freePort } from "../../scripts/services/child.js";
import { SessionCloseNotifier } from "../../handlers/session-close.js";
import { RecordingServer, startHeldImage, type Received } from "../harness/http-fixtures.js";
import { stack } from "../harness/stack.js";
import {
  postJson,
  repoRoot,
  stackEnv,
  startTestWorker,
  type TestWorker,
  getJson,
  pollUntil,
} from "../harness/worker.js";
import { loadImageWorkflow, modelFree } from "../harness/workflows.js";
import { createLogger } from "../../lib/logger.js";

/**
 * A job's identity and what leaves the worker on its behalf: a request_id answers only the request that made it,
 * a cancel request does not outlive the job it was meant for, the operator's keys sign only the operator's
 * deliveries, and a receiver cannot hold a delivery open with an endless answer.
 */

let a: TestWorker;
let b: TestWorker;
const prefix = `idjobs-${randomUUID().slice(0, 8)}/`;
const heartbeatMs = "1000";

beforeAll(async () => {
  const env = { SHARED_JOBS_PREFIX: prefix, JOB_HEARTBEAT_MS: heartbeatMs };
  [a, b] = await Promise.all([startTestWorker(env), startTestWorker(env)]);
});

afterAll(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
});

/** The model-free workflow with a seeded prefix: each run differs, a retry must still get the first answer. */
function seeded(label: string): Record<string, any> {
  const wf = modelFree();
  wf["3"].inputs.filename_prefix = `${label}-__RANDOM_INT__`;
  return wf;
}

const names = (r: { body: any }) => (r.body.output as { filename: string }[]).map((o) => o.filename);

describe("a request_id answers only the request that made it", () => {
  test("another payload under a used id is a 409 on the worker that ran it, and a retry of the same payload gets the first result", async () => {
    const id = `squat-${randomUUID()}`;
    const mine = { request_id: id, workflow_json: seeded("mine"), webhook: { extra_params: { user: 1 } } };
    const first = await postJson(`${a.api}/generate/sync`, { input: mine });
    expect(first.body.status).toBe("completed");

    const squatted = await postJson(`${a.api}/generate/sync`, {
      input: { request_id: id, workflow_json: seeded("theirs") },
    });
    expect([squatted.status, squatted.body.code]).toEqual([409, "request_id_reused"]);
    expect(squatted.body.output).toBeUndefined();
    // Only the webhook differs: still another request.
    const otherHook = await postJson(`${a.api}/generate`, {
      input: { ...mine, webhook: { extra_params: { user: 2 } } },
    });
    expect([otherHook.status, otherHook.body.code]).toEqual([409, "request_id_reused"]);

    // The same request again (its __RANDOM_INT__ seeded anew on a run) is the first job's answer.
    const again = await postJson(`${a.api}/generate/sync`, { input: mine });
    expect(again.status).toBe(200);
    expect(names(again)).toEqual(names(first));
  });

  test("the same holds on another worker of the endpoint, which reads the job from the bucket", async () => {
    const id = `squat-shared-${randomUUID()}`;
    const mine = { request_id: id, workflow_json: seeded("mine") };
    const first = await postJson(`${a.api}/generate/sync`, { input: mine });
    expect(first.body.status).toBe("completed");
    await a.worker.shared!.flush();

    for (const path of ["/generate/sync", "/generate", "/generate/stream"]) {
      const squatted = await postJson(`${b.api}${path}`, {
        input: { request_id: id, workflow_json: seeded("theirs") },
      });
      expect([path, squatted.status, squatted.body?.code]).toEqual([path, 409, "request_id_reused"]);
    }
    expect(b.worker.jobs.get(id)).toBeUndefined();
    // The bucket document carries the binding, not the request: polls show no hash.
    const polled = await getJson(`${b.api}/result/${id}`);
    expect(Object.keys(polled.body)).not.toContain("request_hash");

    const again = await postJson(`${b.api}/generate/sync`, { input: mine });
    expect(again.status).toBe(200);
    expect(again.body.status).toBe("completed");
    expect(names(again)).toEqual(names(first));
    expect(b.worker.jobs.get(id)).toBeUndefined();
  });

  test("a cancel request left for a worker that died does not cancel the retry that runs the id again", async () => {
    const held = await startHeldImage();
    const id = `recancel-${randomUUID()}`;
    const input = { request_id: id, workflow_json: loadImageWorkflow(held.url(`${id}.png`)) };
    const dir = await mkdtemp(join(stack().tmpRoot, "stopped-"));
    const apiPort = await freePort();
    const child = spawn(process.execPath, ["--import", "tsx", join(repoRoot, "worker/cli.ts"), "start"], {
      cwd: repoRoot,
      env: {
        ...process.env,
        ...stackEnv(join(dir, "output")),
        SHARED_JOBS_PREFIX: prefix,
        JOB_HEARTBEAT_MS: heartbeatMs,
        WORKER_PORT: String(await freePort()),
        // Any free port: WORKER_PORT + 1 may be taken on a busy machine.
        WORKER_HTTP_PORT: "0",
        API_PORT: String(apiPort),
        BENCHMARK_SKIP: "true",
        BENCHMARK_CACHE_FILE: join(dir, ".has_benchmark"),
        INPUT_URL_ALLOW_PRIVATE: "true",
        LOG_LEVEL: "warn",
      },
      stdio: "ignore",
    });
    try {
      const api = `http://127.0.0.1:${apiPort}`;
      await pollUntil(
        () => getJson(`${api}/ready`).catch(() => ({ status: 0, body: undefined })),
        (r) => r.status === 200,
      );
      void postJson(`${api}/generate`, { input }).catch(() => undefined);
      await held.requested();
      await pollUntil(
        () => getJson(`${b.api}/result/${id}`),
        (r) => r.status === 200,
      );
      // The owner freezes before it can see the cancel, then dies: the request stays in the bucket.
      child.kill("SIGSTOP");
      const cancel = await postJson(`${b.api}/cancel/${id}`, {});
      expect(cancel.status).toBe(200);
      expect(["queued", "processing"]).toContain(cancel.body.status);
      child.kill("SIGKILL");
      await once(child, "exit");
      const lost = await pollUntil(
        () => getJson(`${b.api}/result/${id}`),
        (r) => r.body?.error?.code === "owner_lost",
        15_000,
      );
      expect(lost.body.error.code).toBe("owner_lost");

      // The caller retries the same request; it runs on b and is still running after b looked for cancels.
      const shared = b.worker.shared!;
      const retried = postJson(`${b.api}/generate/sync`, { input });
      await pollUntil(
        () => Promise.resolve(b.worker.jobs.get(id)?.status),
        (s) => s === "processing",
      );
      const heads = shared.requests.head;
      await pollUntil(
        () => Promise.resolve(shared.requests.head),
        (n) => n >= heads + 2 || b.worker.jobs.get(id)?.final === true,
        10_000,
      );
      held.release();
      const done = await retried;
      expect([done.status, done.body.status]).toEqual([200, "completed"]);
    } finally {
      if (child.exitCode === null) child.kill("SIGKILL");
      await held.stop();
    }
  });
});

describe("the operator's Ed25519 key signs only deliveries to the operator's WEBHOOK_URL", () => {
  test("a caller-chosen URL gets no signature made with it; WEBHOOK_URL gets one that verifies", async () => {
    const seed = randomBytes(32);
    const operatorPublic = nacl.sign.keyPair.fromSeed(seed).publicKey;
    const receiver = await new RecordingServer().start();
    const signer = await startTestWorker({
      WEBHOOK_SIGNING_KEY: seed.toString("base64"),
      WEBHOOK_URL: `${receiver.url}/operator`,
    });
    const verifies = (h: Received) =>
      String(h.headers["webhook-signature"] ?? "")
        .split(" ")
        .filter((s) => s.startsWith("v1a,"))
        .some((s) =>
          nacl.sign.detached.verify(
            Buffer.from(`${h.headers["webhook-id"]}.${h.headers["webhook-timestamp"]}.${h.body}`),
            Buffer.from(s.slice(4), "base64"),
            operatorPublic,
          ),
        );
    try {
      const caller = await postJson(`${signer.api}/generate/sync`, {
        input: {
          workflow_json: modelFree(),
          webhook: { url: `${receiver.url}/caller`, extra_params: { replay: "me" } },
        },
      });
      expect(caller.body.status).toBe("completed");
      const operator = await postJson(`${signer.api}/generate/sync`, {
        input: { workflow_json: modelFree() },
      });
      expect(operator.body.status).toBe("completed");
      await receiver.waitFor(2);
      const atCaller = receiver.received.find((h) => h.url === "/caller")!;
      const atOperator = receiver.received.find((h) => h.url === "/operator")!;
      expect(verifies(atCaller)).toBe(false);
      expect(atCaller.headers["webhook-signature"]).toBeUndefined();
      expect(verifies(atOperator)).toBe(true);
    } finally {
      await signer.stop();
      await receiver.stop();
    }
  });
});

/** A receiver that answers 200 and then streams a body that never ends (slowly enough not to flood the test). */
async function startEndlessReceiver(): Promise<{
  url: string;
  hits: () => number;
  stop: () => Promise<void>;
}> {
  let hits = 0;
  const open = new Set<ServerResponse>();
  const server: Server = createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      hits++;
      res.writeHead(200, { "content-type": "application/octet-stream" });
      open.add(res);
      const chunk = Buffer.alloc(64 * 1024, 120);
      const timer = setInterval(() => res.write(chunk), 10);
      res.on("close", () => {
        clearInterval(timer);
        open.delete(res);
      });
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    hits: () => hits,
    stop: async () => {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

describe("a receiver that answers an endless body", () => {
  test("a webhook delivery finishes as delivered, and the job's result records it", async () => {
    const receiver = await startEndlessReceiver();
    const w = await startTestWorker({ WEBHOOK_TIMEOUT_MS: "5000", WEBHOOK_MAX_ATTEMPTS: "1" });
    try {
      const id = `endless-${randomUUID()}`;
      const r = await postJson(`${w.api}/generate/sync`, {
        input: { request_id: id, workflow_json: modelFree(), webhook: { url: `${receiver.url}/hook` } },
      });
      expect(r.body.status).toBe("completed");
      const recorded = await pollUntil(
        () => getJson(`${w.api}/result/${id}`),
        (p) => p.body?.webhook?.status !== undefined && p.body.webhook.status !== "pending",
        30_000,
      );
      expect(recorded.body.webhook).toMatchObject({ status: "delivered", attempts: 1, http_status: 200 });
      expect(receiver.hits()).toBe(1);
    } finally {
      await w.stop();
      await receiver.stop();
    }
  });

  test("a session's on_close_route callback finishes as delivered", async () => {
    const receiver = await startEndlessReceiver();
    try {
      const notifier = new SessionCloseNotifier({
        allowPrivate: true,
        timeoutMs: 5_000,
        logger: createLogger({ level: "silent", pretty: false }),
      });
      const outcome = await notifier.notify({
        id: "s-endless",
        onCloseRoute: `${receiver.url}/closed`,
        onClosePayload: { reason: "done" },
      });
      expect(outcome).toBe("delivered");
      expect(receiver.hits()).toBe(1);
    } finally {
      await receiver.stop();
    }
  });
});
