import { createHash, randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, readdir } from "node:fs/promises";
import type { ServerResponse } from "node:http";
import { join } from "node:path";
import type { InputDownloader } from "../../handlers/preprocess/downloads.js";
import { RouterEmulator } from "../../scripts/router-emulator/emulator.js";
import { RED_PIXEL_PNG, RecordingServer } from "../harness/http-fixtures.js";
import { stack } from "../harness/stack.js";
import { postJson, startTestWorker, type TestWorker } from "../harness/worker.js";
import { loadImageWorkflow, modelFree } from "../harness/workflows.js";

/**
 * A job's inputs, attacked on the real stack: how many URL and data: inputs one request may make the worker fetch,
 * and which file names a file input (LoadImage's `image`) may carry to ComfyUI.
 */

/** The name the worker's input cache gives a URL or data: URI (without its extension). */
const cacheStem = (uri: string) => `url_${createHash("sha256").update(uri).digest("hex").slice(0, 32)}`;

/** Which of these URIs left a file in `dir` (finished or partial). */
async function filesFor(dir: string, uris: string[]): Promise<string[]> {
  const stems = new Set(uris.map(cacheStem));
  const names = await readdir(dir).catch(() => [] as string[]);
  return names.filter((n) => stems.has(n.slice(0, 36)));
}

/** Polls /result/{id} until the job is final (10 s at most). */
async function finalResult(api: string, id: string): Promise<Record<string, any>> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const res = await fetch(`${api}/result/${id}`, { signal: AbortSignal.timeout(5_000) });
    const body = (await res.json()) as Record<string, any>;
    if (["completed", "failed", "cancelled"].includes(body.status)) return body;
    if (Date.now() > deadline) throw new Error(`job ${id} still ${body.status} after 10 s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe("inputs per job: count, node types, concurrency, cancel", () => {
  let router: RouterEmulator;
  let w: TestWorker;
  let inputDir: string;

  beforeAll(async () => {
    router = new RouterEmulator({ port: 0 });
    await router.listen();
    // An input folder of its own: nothing here reaches ComfyUI, and what is written is this worker's alone.
    inputDir = await mkdtemp(join(stack().tmpRoot, "inputs-"));
    w = await startTestWorker(
      { UNSECURED: "false", REPORT_ADDR: router.url, REPORT_INTERVAL_MS: "100", COMFYUI_INPUT_DIR: inputDir },
      { publicKeyPem: router.publicKeyPem },
    );
    await router.waitFor(() => router.workers.has(w.routed));
  });

  afterAll(async () => {
    await w?.stop();
    await router?.close();
  });

  test("3,000 data: inputs on an unknown node type (about 100 KB, routed): 400, no file written, the worker still runs a job", async () => {
    const uris = Array.from({ length: 3_000 }, (_, i) => `data:,${randomUUID().slice(0, 16)}${i}`);
    const inputs = Object.fromEntries(uris.map((u, i) => [`i${i}`, u]));
    const input = { workflow_json: { "1": { class_type: "NoSuchNode", inputs } } };
    expect(JSON.stringify(input).length).toBeGreaterThan(90_000);
    const r = await postJson(
      `${w.routed}/generate/sync`,
      { auth_data: router.authData(w.routed), payload: { input }, session_id: null },
      { timeoutMs: 30_000 },
    );
    expect(r.status).toBe(400);
    expect(r.body.error.code).toBe("invalid_workflow");
    expect(r.body.message).toMatch(/NoSuchNode/);
    expect(await filesFor(inputDir, uris)).toEqual([]);
    const normal = await postJson(`${w.api}/generate/sync`, { input: { workflow_json: modelFree() } });
    expect(normal.status).toBe(200);
    expect(normal.body.status).toBe("completed");
  }, 60_000);

  test("65 URL or data: inputs on a known node are a 400 naming MAX_INPUT_URLS, refused before any is fetched", async () => {
    const uris = Array.from(
      { length: 65 },
      (_, i) => `data:image/png;name=${randomUUID()}-${i};base64,${RED_PIXEL_PNG.toString("base64")}`,
    );
    const workflow = Object.fromEntries(
      uris.map((image, i) => [`${i + 1}`, { class_type: "LoadImage", inputs: { image } }]),
    );
    const r = await postJson(`${w.api}/generate/sync`, { input: { workflow_json: workflow } });
    expect(r.status).toBe(400);
    expect(r.body.message).toMatch(/MAX_INPUT_URLS=64/);
    expect(await filesFor(inputDir, uris)).toEqual([]);
  }, 60_000);
});

describe("downloads worker-wide: bounded, and a cancel while waiting for a slot is honoured", () => {
  let w: TestWorker;
  let files: RecordingServer;
  const held: ServerResponse[] = [];

  beforeAll(async () => {
    files = await new RecordingServer().start();
    files.handler = (req, res) => {
      if (req.url.startsWith("/hold/")) held.push(res);
      else {
        res.statusCode = 404;
        res.end();
      }
    };
    const inputDir = await mkdtemp(join(stack().tmpRoot, "inputs-"));
    w = await startTestWorker({ INPUT_DOWNLOAD_CONCURRENCY: "1", COMFYUI_INPUT_DIR: inputDir });
  });

  afterAll(async () => {
    for (const res of held) res.destroy();
    await w?.stop();
    await files?.stop();
  });

  test("with INPUT_DOWNLOAD_CONCURRENCY=1 a second job's download waits, and its cancel ends it without a fetch", async () => {
    const first = `hold-first-${randomUUID()}`;
    const second = `hold-second-${randomUUID()}`;
    const a = await postJson(`${w.api}/generate`, {
      input: { request_id: first, workflow_json: loadImageWorkflow(`${files.url}/hold/${first}.png`) },
    });
    expect(a.status).toBe(202);
    await files.waitFor(1);
    const b = await postJson(`${w.api}/generate`, {
      input: { request_id: second, workflow_json: loadImageWorkflow(`${files.url}/hold/${second}.png`) },
    });
    expect(b.status).toBe(202);
    // The second job's download has either started (the server sees it) or waits for the one slot.
    const downloader = (w.worker.jobs as unknown as { deps: { downloader: InputDownloader } }).deps
      .downloader;
    const deadline = Date.now() + 10_000;
    while (!(downloader.waiting === 1 || files.received.length > 1) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(files.received.map((r) => r.url)).toEqual([`/hold/${first}.png`]);
    expect(downloader.waiting).toBe(1);
    const cancel = await postJson(`${w.api}/cancel/${second}`, {});
    expect(cancel.status).toBeLessThan(300);
    const doc = await finalResult(w.api, second);
    expect(doc.status).toBe("cancelled");
    expect(files.received.map((r) => r.url)).toEqual([`/hold/${first}.png`]);
    // The first download goes on and finishes normally once its server answers.
    const res = held.shift()!;
    res.setHeader("content-type", "image/png");
    res.end(RED_PIXEL_PNG);
    await postJson(`${w.api}/cancel/${first}`, {});
    expect(["completed", "failed", "cancelled"]).toContain((await finalResult(w.api, first)).status);
    expect(files.received.map((r) => r.url)).toEqual([`/hold/${first}.png`]);
  }, 60_000);
});

describe("file inputs stay in the input folder", () => {
  let w: TestWorker;
  let comfyOutput: string;

  beforeAll(async () => {
    comfyOutput = join(stack().comfyBaseDir, "output");
    // OUTPUT_DIR as it is by default: ComfyUI's own output folder.
    w = await startTestWorker({ OUTPUT_DIR: comfyOutput });
  });

  afterAll(async () => {
    await w?.stop();
  });

  test("LoadImage of another job's output (three ways) or of /etc/hostname is a 400 naming node and input", async () => {
    const victim = `victim-${randomUUID()}`;
    const done = await postJson(`${w.api}/generate/sync`, {
      input: { request_id: victim, workflow_json: modelFree() },
    });
    expect(done.body.status).toBe("completed");
    const png = done.body.output.find((o: any) => o.filename.endsWith(".png"));
    expect(png.local_path).toBe(join(comfyOutput, victim, png.filename));
    expect(existsSync(png.local_path)).toBe(true);
    for (const image of [
      `${victim}/${png.filename} [output]`,
      `../output/${victim}/${png.filename}`,
      png.local_path,
      "/etc/hostname",
      `${png.filename} [output]`,
      `..\\output\\${victim}\\${png.filename}`,
    ]) {
      const r = await postJson(`${w.api}/generate/sync`, {
        input: { workflow_json: loadImageWorkflow(image) },
      });
      expect([image, r.status]).toEqual([image, 400]);
      expect(r.body.message).toMatch(/node 10 \(LoadImage\) input "image"/);
      expect(r.body.output ?? []).toEqual([]);
    }
  }, 120_000);

  test("a URL input still loads, and the cache file it became may be named again by its plain name", async () => {
    const uri = `data:image/png;name=${randomUUID()};base64,${RED_PIXEL_PNG.toString("base64")}`;
    const first = await postJson(`${w.api}/generate/sync`, {
      input: { workflow_json: loadImageWorkflow(uri) },
    });
    expect(first.status).toBe(200);
    expect(first.body.status).toBe("completed");
    const name = first.body.comfyui_response.prompt[2]["10"].inputs.image;
    expect(name).toMatch(/^url_[0-9a-f]{32}\.png$/);
    const again = await postJson(`${w.api}/generate/sync`, {
      input: { workflow_json: loadImageWorkflow(name) },
    });
    expect(again.status).toBe(200);
    expect(again.body.status).toBe("completed");
  }, 120_000);
});
