import { readFileSync } from "node:fs";
import { mkdir, mkdtemp, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import { artifactsDir, launchChromium } from "../harness/browser.js";
import { RecordingServer } from "../harness/http-fixtures.js";
import { stack } from "../harness/stack.js";
import { loadConfig } from "../../config/index.js";
import { createLogger } from "../../lib/logger.js";
import { createWorker } from "../../worker/app.js";
import { bootBenchmark } from "../../benchmark/boot.js";
import { postJson, repoRoot, stackEnv, startTestWorker, type TestWorker } from "../harness/worker.js";
import { modelFree, tinyText2Image } from "../harness/workflows.js";

/** The operator page at / on the local API port, in a real headless Chromium against the real stack. */

let w: TestWorker;
let browser: Browser;
let page: Page;

beforeAll(async () => {
  await mkdir(artifactsDir, { recursive: true });
  [w, browser] = await Promise.all([startTestWorker(), launchChromium()]);
  page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(30_000);
}, 600_000);
afterAll(async () => {
  await browser?.close();
  await w?.stop();
});

/**
 * Waits until an image matching `selector` is decoded (with `width`, if given). A function, not a string: a string
 * predicate is re-evaluated with eval() inside the page while it polls, which the page's CSP (no 'unsafe-eval')
 * refuses, so it failed whenever the image was not there at the first try.
 */
const waitForImage = (selector: string, width?: number) =>
  page.waitForFunction(
    ([sel, w]) =>
      [...(globalThis as any).document.querySelectorAll(sel)].some(
        (i: any) => i.complete && (w === undefined ? i.naturalWidth > 0 : i.naturalWidth === w),
      ),
    [selector, width] as const,
  );

const shot = (name: string) =>
  page.screenshot({ path: join(artifactsDir, `console-${name}.png`), fullPage: true });

test("the page shows the status, runs a workflow from the form with the keyboard, and lists the job", async () => {
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  const res = await page.goto(`${w.api}/`);
  expect(res?.status()).toBe(200);
  expect(res?.headers()["content-security-policy"]).toContain("script-src 'self'");

  // Status at a glance, from the event stream.
  await page.locator("#live", { hasText: "live" }).waitFor();
  await page.locator("#phase", { hasText: "ready" }).waitFor();
  await page.locator(".card", { hasText: "ComfyUI" }).locator(".value", { hasText: "answering" }).waitFor();
  await page.locator(".card", { hasText: "S3" }).locator(".value", { hasText: "reachable" }).waitFor();
  await expect(page.locator(".card", { hasText: "Score" }).textContent()).resolves.toContain(
    "BENCHMARK_SKIP",
  );
  // The examples come from a request of their own: waited for, not read at once.
  await page.locator("#example option", { hasText: "model free blur" }).waitFor({ state: "attached" });
  await shot("1-ready");

  // Keyboard only: Tab to the text box, type the workflow, Tab to the button, Enter.
  const tabTo = async (id: string) => {
    for (let i = 0; i < 30; i++) {
      await page.keyboard.press("Tab");
      if ((await page.evaluate("document.activeElement && document.activeElement.id")) === id) return;
    }
    throw new Error(`#${id} cannot be reached with Tab`);
  };
  await tabTo("workflow");
  await page.keyboard.type(JSON.stringify(modelFree()));
  await tabTo("run");
  // Every value the progress bar takes, recorded in the page as it changes.
  // Each change's old value is kept: lines that arrive in one chunk change the bar several times before the
  // observer runs, and reading the attribute then would only see the last.
  await page.evaluate(`(() => {
    window.__progress = [];
    const bar = document.getElementById("run-bar");
    new MutationObserver((records) => { for (const r of records) window.__progress.push(Number(r.oldValue)); })
      .observe(bar, { attributes: true, attributeFilter: ["aria-valuenow"], attributeOldValue: true });
  })()`);
  await page.keyboard.press("Enter");
  await page.locator("#run-state").waitFor({ state: "visible" });
  await shot("2-running");

  await page.locator("#run-result", { hasText: "completed" }).waitFor({ timeout: 60_000 });
  const seen = [
    ...((await page.evaluate("window.__progress")) as number[]),
    Number(await page.locator("#run-bar").getAttribute("aria-valuenow")),
  ];
  expect(seen.at(-1)).toBe(100);
  expect(seen.some((v) => v > 0 && v < 100)).toBe(true); // it moved through the nodes, not only to the end
  expect(seen).toEqual([...seen].sort((a, b) => a - b));
  // The thumbnails are the worker's own files, loaded for real (decoded, with a size).
  await waitForImage("#run-outputs img", 64);

  // The job list has it too: completed, its stage bar, its thumbnails.
  const item = page.locator("li.job.completed").first();
  await item.locator(".stages .seg").first().waitFor();
  await waitForImage("li.job.completed .thumbs img");
  await expect(item.locator(".stages").getAttribute("aria-label")).resolves.toMatch(/generation \d/);
  await shot("3-done");

  // A failure shows its cause.
  await page.locator("#workflow").fill(
    JSON.stringify({
      "1": { class_type: "LoadImage", inputs: { image: "console-test-missing.png" } },
      "2": { class_type: "SaveImage", inputs: { images: ["1", 0], filename_prefix: "x" } },
    }),
  );
  await page.locator("#run").click();
  await page.locator("#run-result", { hasText: "failed" }).waitFor({ timeout: 60_000 });
  const cause = page.locator("li.job.failed .cause").first();
  await cause.waitFor();
  // ComfyUI's own words: which node, what is wrong.
  await expect(cause.textContent()).resolves.toMatch(/LoadImage \(node 1\).*console-test-missing\.png/);
  await shot("4-failed");
  expect(errors).toEqual([]);
});

test("a sampling workflow shows its steps live, in the form and in the job list", async () => {
  // Every text the running job's line and the form show, recorded in the page as it changes: the sampler's steps
  // are on screen only while it runs, which on a fast machine is shorter than a locator's polling interval. Each
  // event-stream message is its own task, so the observer sees every state the page renders.
  await page.evaluate(`(() => {
    window.__labels = { line: new Set(), form: new Set() };
    const record = () => {
      for (const l of document.querySelectorAll("li.job.generating .bar-label")) window.__labels.line.add(l.textContent);
      window.__labels.form.add(document.getElementById("run-text").textContent);
    };
    new MutationObserver(record).observe(document.body, { subtree: true, childList: true, characterData: true });
  })()`);
  // Enough steps that the sampler outlasts several of the feed's 150 ms batches even on a fast CPU.
  await page.locator("#workflow").fill(JSON.stringify(tinyText2Image(120)));
  await page.keyboard.press("Control+Enter");
  await page.locator("#run-result", { hasText: "completed" }).waitFor({ timeout: 150_000 });
  const labels = (await page.evaluate("[[...window.__labels.line], [...window.__labels.form]]")) as [
    string[],
    string[],
  ];
  // The running job's line (from the event stream) and the form (from /generate/stream) named the sampler and its
  // step while it ran.
  expect(labels[0].filter((l) => /KSampler \(node 3\) · step \d+\/120/.test(l))).not.toEqual([]);
  expect(labels[1].filter((l) => /KSampler \(node 3\): step \d+\/120/.test(l))).not.toEqual([]);
  await waitForImage("#run-outputs img", 64);
  await shot("6-sampled");
}, 180_000); // sampling on the shared CPU takes tens of seconds

test("accessibility basics: every control is named, images have alt text, text contrast is at least 4.5:1", async () => {
  // Evaluated by the driver, so that the page's own CSP (no inline script) stays as it is.
  await page.evaluate(readFileSync(join(repoRoot, "test/fixtures/browser/a11y.js"), "utf8"));
  expect(await page.evaluate("window.__a11y.unlabelled()")).toEqual([]);
  expect(await page.evaluate("window.__a11y.imagesWithoutAlt()")).toEqual([]);
  const pairs = (await page.evaluate("window.__a11y.contrast()")) as [string, string, number][];
  // The main pairs are all there: body text, headings, labels, cards, badges, job lines, the failure cause.
  const names = pairs.map((p) => p[0]).join(" ");
  for (const part of [
    "h1",
    "h2",
    "label",
    "dt",
    "dd.value",
    "dd.detail",
    "span.badge",
    "p.cause",
    "button#run",
  ]) {
    expect(names).toContain(part);
  }
  expect(pairs.filter(([, , ratio]) => ratio < 4.5)).toEqual([]);
});

test("the page is served on the local API port only, never on the routed port", async () => {
  for (const path of [
    "/",
    "/console/app.js",
    "/console/events",
    "/console/workflows",
    "/console/output/x/0",
  ]) {
    const res = await fetch(`${w.routed}${path}`, { signal: AbortSignal.timeout(5_000) });
    const body = await res.text();
    expect([path, res.status]).not.toEqual([path, 200]);
    expect(body).not.toMatch(/<!doctype|EventSource|event: status/i);
  }
});

test("output and example routes serve only what the worker listed, whatever the path says", async () => {
  const done = await postJson(`${w.api}/generate/sync`, { input: { workflow_json: modelFree() } });
  expect(done.status).toBe(200);
  const id = done.body.id as string;
  const ok = await fetch(`${w.api}/console/output/${id}/0`);
  expect(ok.status).toBe(200);
  expect(ok.headers.get("content-type")).toMatch(/^image\//);
  await ok.body?.cancel();
  for (const path of [
    `/console/output/${id}/9`,
    `/console/output/${id}/-1`,
    `/console/output/${id}/0x0`,
    `/console/output/${id}/..%2F..%2F..%2Fetc%2Fpasswd`,
    `/console/output/..%2F..%2Fetc/0`,
    "/console/output/unknown-job/0",
    "/console/workflows/..%2F..%2Fpackage.json",
    "/console/workflows/..%2Fworkflows%2Fmodel_free_blur.json",
    "/console/workflows/package.json",
  ]) {
    const res = await fetch(`${w.api}${path}`);
    const body = await res.text();
    expect([path, res.status]).toEqual([path, 404]);
    expect(body).not.toContain("root:");
    expect(body).not.toContain('"name"');
  }
  const example = await fetch(`${w.api}/console/workflows/model_free_blur.json`);
  expect(await example.json()).toEqual(modelFree());
});

test("the event stream never carries a job's input: S3 keys and webhook secrets stay out", async () => {
  const ac = new AbortController();
  const res = await fetch(`${w.api}/console/events`, { signal: ac.signal });
  expect(res.headers.get("content-type")).toMatch(/^text\/event-stream/);
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  const s = stack();
  const secret = `console-secret-${Date.now()}`;
  const job = postJson(`${w.api}/generate/sync`, {
    input: {
      request_id: `console-leak-${Date.now()}`,
      workflow_json: modelFree(),
      s3: {
        access_key_id: `AKIA${secret}`,
        secret_access_key: secret,
        endpoint_url: s.s3Endpoint,
        bucket_name: s.s3Bucket,
      },
      webhook: { secret },
    },
  });
  let text = "";
  const deadline = setTimeout(() => ac.abort(), 60_000);
  try {
    // Until the stream shows this job finished (failed: the keys are wrong).
    while (!/"id":"console-leak-[^"]+","status":"failed"/.test(text)) {
      const { value, done } = await reader.read();
      if (done) break;
      text += value;
    }
  } finally {
    clearTimeout(deadline);
    ac.abort();
  }
  expect((await job).body.status).toBe("failed");
  expect(text).toMatch(/"status":"failed"/);
  expect(text).not.toContain(secret);
});

test("the status tells what the autoscaler last heard, without the master token; an open page does not hold up stop", async () => {
  const autoscaler = await new RecordingServer().start();
  const token = `mtoken-console-${Date.now()}`;
  const own = await startTestWorker({
    REPORT_ADDR: autoscaler.url,
    MASTER_TOKEN: token,
    CONTAINER_ID: "42",
    REPORT_INTERVAL_MS: "200",
  });
  try {
    const res = await fetch(`${own.api}/console/events`, { signal: AbortSignal.timeout(30_000) });
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    let last: any;
    while (!last?.autoscaler.last?.delivered) {
      const { value, done } = await reader.read();
      if (done) throw new Error("the event stream ended");
      text += value;
      const statuses = [...text.matchAll(/event: status\ndata: (.*)\n\n/g)];
      last = statuses.length > 0 ? JSON.parse(statuses.at(-1)![1]!) : undefined;
    }
    await autoscaler.waitFor(1);
    expect(autoscaler.received[0]!.body).toContain(token); // the autoscaler gets it ...
    expect(last.autoscaler.addrs).toEqual([autoscaler.url]);
    expect(last.autoscaler.last.fields).toHaveProperty("max_perf");
    expect(text).not.toContain(token); // ... the page never does
    // The stream is still open: stopping closes it rather than waiting for it (ended or cut; EventSource
    // reconnects either way). What was already sent is read first, then the end.
    await own.stop();
    const ended = (async () => {
      for (;;) {
        const r = await reader.read();
        if (r.done) return true;
        text += r.value;
      }
    })();
    await expect(ended.catch(() => true)).resolves.toBe(true);
    expect(text).not.toContain(token);
  } finally {
    await own.stop();
    await autoscaler.stop();
  }
});

test("a page opened at boot sees the benchmark's rounds, then ready with a measured score", async () => {
  const dir = await mkdtemp(join(stack().tmpRoot, "console-boot-"));
  const bench = modelFree();
  bench["3"].inputs.filename_prefix = "bench-__RANDOM_INT__";
  delete bench["4"];
  // Slow enough (a large blur) that the benchmark outlasts the feed's 150 ms batching of job events: the worker is
  // ready after a warm-up and one timed run, which the tiny image would finish within one batch.
  Object.assign(bench["1"].inputs, { width: 1024, height: 1024, batch_size: 1 });
  Object.assign(bench["2"].inputs, { blur_radius: 15, sigma: 4 });
  await writeFile(join(dir, "benchmark.json"), JSON.stringify(bench));
  const config = loadConfig(
    {
      ...stackEnv(join(dir, "output")),
      WORKER_PORT: "0",
      API_PORT: "0",
      BENCHMARK_JSON_PATH: join(dir, "benchmark.json"),
      BENCHMARK_CACHE_FILE: join(dir, ".has_benchmark"),
      BENCHMARK_MAX_ROUNDS: "3",
      LOG_LEVEL: "silent",
    },
    repoRoot,
  );
  const worker = createWorker({
    config,
    logger: createLogger({ level: "silent", pretty: false }),
    root: repoRoot,
    benchmark: bootBenchmark(config, repoRoot),
  });
  const started = worker.start();
  try {
    // The local port listens before ComfyUI is even asked; there is no event for it, so yield until it does.
    const deadline = Date.now() + 10_000;
    while (!worker.apiUrl() && Date.now() < deadline) await new Promise((r) => setImmediate(r));
    const res = await fetch(`${worker.apiUrl()}/console/events`, { signal: AbortSignal.timeout(60_000) });
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    const statuses = () => [...text.matchAll(/event: status\ndata: (.*)\n\n/g)].map((m) => JSON.parse(m[1]!));
    const warmupDone =
      /event: job\ndata: \{"id":"benchmark-warmup-[^"]+","status":"completed"[^\n]*"internal":true/;
    // Until ready, and the warm-up's completion (pushed with the next batch of job events, which may come after).
    while (statuses().at(-1)?.phase !== "ready" || !warmupDone.test(text)) {
      const { value, done } = await reader.read();
      if (done) throw new Error("the event stream ended");
      text += value;
    }
    const rounds = statuses().filter((s) => s.phase === "benchmarking" && s.benchmark_round);
    expect(rounds.length).toBeGreaterThan(0);
    expect(rounds[0].benchmark_round).toEqual({
      label: expect.stringMatching(/^(warmup|\d)$/),
      max_rounds: 3,
    });
    const ready = statuses().at(-1);
    expect(ready.score.max_perf).toBeGreaterThan(0);
    expect(ready.score.how).toMatch(/^measured/);
    await reader.cancel();
  } finally {
    await started.catch(() => undefined);
    await worker.stop(5_000);
  }
});
