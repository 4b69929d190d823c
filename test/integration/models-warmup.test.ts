import { readdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { RouterEmulator } from "../../scripts/router-emulator/emulator.js";
import { captureLog } from "../harness/log-capture.js";
import { RecordingServer, type Received } from "../harness/http-fixtures.js";
import { getJson, postJson, startTestWorker, type TestWorker } from "../harness/worker.js";
import { downloaded, modelsDir, sendFile, tinyCheckpointPath, tinyLora } from "../harness/models.js";
import { tinyText2Image } from "../harness/workflows.js";

/**
 * Models warmed before traffic, on the real stack: MODELS fetched at start before the worker says it is ready, and
 * POST /models/prefetch on the local API and (signed) on the routed port, through the same downloads and cache as
 * a job's loader inputs. The tiny checkpoint and a tiny LoRA are served by a local HTTP server.
 */

let files: RecordingServer;
let router: RouterEmulator;
let w: TestWorker;
const log = captureLog("info");
const lora = tinyLora("warm");
const requestsFor = (path: string): Received[] => files.received.filter((r) => r.url.split("?")[0] === path);
let checkpointUrl: string;
let before: { checkpoints: string[]; loras: string[] };

beforeAll(async () => {
  before = { checkpoints: await downloaded("checkpoints"), loras: await downloaded("loras") };
  const checkpointPath = await tinyCheckpointPath();
  files = await new RecordingServer().start();
  files.handler = (req, res) => {
    const path = req.url.split("?")[0]!;
    if (path === "/warm-checkpoint.safetensors") return sendFile(res, checkpointPath);
    if (path === "/loras/warm.safetensors") {
      res.writeHead(200, { "content-length": lora.length });
      return void res.end(lora);
    }
    res.statusCode = 404;
    res.end();
  };
  checkpointUrl = `${files.url}/warm-checkpoint.safetensors`;
  router = new RouterEmulator({ port: 0 });
  await router.listen();
  w = await startTestWorker(
    {
      UNSECURED: "false",
      REPORT_ADDR: router.url,
      MODELS: `checkpoints=${checkpointUrl}?token=SECRET-TOKEN`,
    },
    { publicKeyPem: router.publicKeyPem, logger: log.logger },
  );
});

afterAll(async () => {
  await w?.stop();
  await router?.close();
  await files?.stop();
  // What this file downloaded goes with it (the stack's models folder is shared).
  for (const dir of ["checkpoints", "loras"] as const) {
    for (const name of await downloaded(dir)) {
      if (!before[dir].includes(name)) await rm(join(modelsDir(), dir, name), { force: true });
    }
  }
});

const lines = () => log.lines.map((l) => JSON.parse(l) as Record<string, any>);

test("MODELS is in its folder before the worker is ready, and the first job using it downloads nothing", async () => {
  expect(w.worker.phase()).toBe("ready");
  expect((await getJson(`${w.api}/ready`)).status).toBe(200);
  const names = (await downloaded("checkpoints")).filter((n) => n.endsWith("-warm-checkpoint.safetensors"));
  expect(names).toHaveLength(1);
  expect(requestsFor("/warm-checkpoint.safetensors")).toHaveLength(1);
  // Logged (stage models, size, time, the reference without its query) before the worker said it was ready.
  const all = lines();
  const fetched = all.findIndex((l) => l.stage === "models" && l.folder === "checkpoints");
  const ready = all.findIndex((l) => /^ready: max_perf/.test(String(l.msg)));
  expect(fetched).toBeGreaterThanOrEqual(0);
  expect(ready).toBeGreaterThan(fetched);
  expect(all[fetched]).toMatchObject({
    model: checkpointUrl,
    bytes: (await stat(join(modelsDir(), "checkpoints", names[0]!))).size,
    cached: false,
    ms: expect.any(Number),
  });
  expect(log.lines.join("\n")).not.toContain("SECRET-TOKEN");

  const wf = tinyText2Image(1);
  wf["4"].inputs.ckpt_name = `${checkpointUrl}?token=SECRET-TOKEN`;
  const res = await postJson(`${w.api}/generate/sync`, { input: { workflow_json: wf } });
  expect([res.status, res.body.status]).toEqual([200, "completed"]);
  expect(requestsFor("/warm-checkpoint.safetensors")).toHaveLength(1);
});

test("POST /models/prefetch on the local API warms a LoRA; a second one reports it cached", async () => {
  const ref = `${files.url}/loras/warm.safetensors`;
  const first = await postJson(`${w.api}/models/prefetch`, { models: [{ folder: "loras", ref }] });
  expect(first).toEqual({
    status: 200,
    body: {
      models: [
        {
          folder: "loras",
          model: ref,
          name: expect.stringMatching(/^od-[0-9a-f]{16}-warm\.safetensors$/),
          bytes: lora.length,
          cached: false,
          ms: expect.any(Number),
        },
      ],
    },
  });
  expect(await downloaded("loras")).toContain(first.body.models[0].name);
  const second = await postJson(`${w.api}/models/prefetch`, { models: [{ folder: "loras", ref }] });
  expect(second.status).toBe(200);
  expect(second.body.models[0]).toMatchObject({ name: first.body.models[0].name, cached: true });
  expect(requestsFor("/loras/warm.safetensors")).toHaveLength(1);
});

test("on the routed port it is signed like /generate: unsigned 401, signed 200", async () => {
  const payload = { models: [{ folder: "loras", ref: `${files.url}/loras/warm.safetensors` }] };
  const forged = {
    auth_data: { ...router.authData(w.routed), signature: router.signUrl("http://127.0.0.1:2") },
    payload,
  };
  expect((await postJson(`${w.routed}/models/prefetch`, forged)).status).toBe(401);
  const bare = await postJson(`${w.routed}/models/prefetch`, payload);
  expect(bare.status).toBe(422);
  const signed = await postJson(`${w.routed}/models/prefetch`, {
    auth_data: router.authData(w.routed),
    payload,
  });
  expect([signed.status, signed.body.models?.[0]?.cached]).toEqual([200, true]);
});

test("a bad reference is a 4xx with its code, and nothing is left half-written", async () => {
  const cases: [unknown, number, string][] = [
    [{ folder: "loras", ref: `${files.url}/loras/missing.safetensors` }, 424, "model_unreachable"],
    [{ folder: "unet", ref: `${files.url}/loras/warm.safetensors` }, 400, "model_bad_reference"],
    [{ folder: "loras", ref: `${files.url}/loras/warm.safetensors#sha256=nope` }, 400, "model_bad_reference"],
    [{ folder: "loras", ref: "ftp://host/x.safetensors" }, 400, "model_bad_reference"],
    [{ folder: "loras" }, 400, "bad_request"],
  ];
  for (const [entry, status, code] of cases) {
    const res = await postJson(`${w.api}/models/prefetch`, { models: [entry] });
    expect([entry, res.status, res.body?.code]).toEqual([entry, status, code]);
  }
  expect(await readdir(join(modelsDir(), ".downloads")).catch(() => [])).toEqual([]);
});

test("a MODELS entry that cannot be had is the worker's error (error_msg), never ready", async () => {
  const failing = await startTestWorker({
    MODELS: `loras=${files.url}/loras/missing.safetensors?token=SECRET-TOKEN`,
  });
  try {
    expect(failing.worker.phase()).toBe("error");
    expect(failing.worker.errorMsg()).toBe(
      `MODELS: loras=${files.url}/loras/missing.safetensors: the source answered 404 (model_unreachable)`,
    );
    expect((await getJson(`${failing.api}/ready`)).status).not.toBe(200);
  } finally {
    await failing.stop();
  }
});
