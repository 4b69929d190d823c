import { spawn } from "node:child_process";
import { createHmac, randomBytes, randomUUID } from "node:crypto";
import { once } from "node:events";
import { mkdir, mkdtemp, readdir, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { freePort } from "../../scripts/services/child.js";
import { ensureComfyUI, ensureTinyCheckpoint, startComfyUI } from "../../scripts/services/comfyui.js";
import { RouterEmulator } from "../../scripts/router-emulator/emulator.js";
import { RecordingServer, startHeldImage, startSlowProxy } from "../harness/http-fixtures.js";
import { stack } from "../harness/stack.js";
import { postJson, repoRoot, startTestWorker } from "../harness/worker.js";
import { loadImageWorkflow, modelFree, tinyText2Image } from "../harness/workflows.js";

/** Each fault is real: a killed process, a closed port, a receiver that fails, a full disk threshold, a signal. */

test("ComfyUI killed mid-job: the job fails fast and retryable, the autoscaler hears it, and the worker recovers", async () => {
  const install = await ensureComfyUI();
  const baseDir = await mkdtemp(join(stack().tmpRoot, "own-comfy-"));
  await ensureTinyCheckpoint(install, baseDir);
  const port = await freePort();
  const logFile = join(baseDir, "comfyui.log");
  let comfy = await startComfyUI({ install, host: "127.0.0.1", port, baseDir, logFile });
  const router = new RouterEmulator({ port: 0 });
  await router.listen();
  const w = await startTestWorker({
    COMFYUI_URL: comfy.url,
    COMFYUI_BASE_DIR: baseDir,
    REPORT_ADDR: router.url,
    REPORT_INTERVAL_MS: "100",
  });
  try {
    const id = `killed-${randomUUID()}`;
    const answer = postJson(`${w.api}/generate/sync`, {
      input: { request_id: id, workflow_json: tinyText2Image(300) },
    });
    await new Promise<void>((resolve) => {
      const check = () => {
        const job = w.worker.jobs.get(id);
        if (job?.details?.progress_updates.length) return resolve();
        setTimeout(check, 20);
      };
      check();
    });
    comfy.process.kill("SIGKILL");
    // Failed as unavailable (retryable), not left to the job's deadline (a terminal job_timeout) nor hung.
    const { status, body } = await answer;
    expect(status).toBe(503);
    expect(body.status).toBe("failed");
    expect(body.error.code).toBe("comfyui_unavailable");
    await comfy.stop();

    await router.waitFor(() =>
      router.reports.some(
        (r) => r.path === "/worker_status/" && r.body.error_msg === "ComfyUI stopped answering",
      ),
    );
    const ready = await fetch(`${w.api}/ready`);
    expect(ready.status).toBe(503);

    comfy = await startComfyUI({ install, host: "127.0.0.1", port, baseDir, logFile });
    await router.waitFor(() => {
      const last = router.reports.filter((r) => r.path === "/worker_status/").at(-1);
      return last?.body.error_msg === "";
    });
    const after = await postJson(`${w.api}/generate/sync`, { input: { workflow_json: tinyText2Image(2) } });
    expect(after.status).toBe(200);
    expect(after.body.status).toBe("completed");
    // A retryable failure is not kept: the same request_id runs again.
    const retried = await postJson(`${w.api}/generate/sync`, {
      input: { request_id: id, workflow_json: modelFree() },
    });
    expect(retried.body.status).toBe("completed");
  } finally {
    await w.stop();
    await router.close();
    await comfy.stop();
  }
});

test("S3 port closed during upload: upload_error; once it reopens, uploads succeed", async () => {
  const s = stack();
  const w = await startTestWorker();
  const proxy = await startSlowProxy(new URL(s.s3Endpoint), 0);
  const port = proxy.port;
  // The same request each time, to the port that closes and reopens.
  const send = () =>
    postJson(`${w.api}/generate/sync`, {
      input: {
        workflow_json: modelFree(),
        s3: {
          access_key_id: s.s3AccessKeyId,
          secret_access_key: s.s3SecretAccessKey,
          endpoint_url: `http://127.0.0.1:${port}`,
        },
      },
    });
  try {
    await proxy.close();
    const down = await send();
    expect([down.status, down.body.status, down.body.error?.code]).toEqual([502, "failed", "upload_failed"]);
    expect(down.body.output.every((o: any) => typeof o.upload_error === "string" && !o.url)).toBe(true);
    const reopened = await startSlowProxy(new URL(s.s3Endpoint), 0, port);
    try {
      const up = await send();
      expect(up.body.status).toBe("completed");
      expect(up.body.output.every((o: any) => o.url && !o.upload_error)).toBe(true);
    } finally {
      await reopened.close();
    }
  } finally {
    await w.stop();
  }
});

test("webhook receiver answering 500 then 200: delivered on retry, Standard Webhooks signature verifies", async () => {
  const secretBytes = randomBytes(24);
  const secret = `whsec_${secretBytes.toString("base64")}`;
  const hooks = await new RecordingServer().start();
  let calls = 0;
  hooks.handler = (_req, res) => {
    res.statusCode = ++calls === 1 ? 500 : 200;
    res.end();
  };
  const w = await startTestWorker({ WEBHOOK_URL: `${hooks.url}/hook`, WEBHOOK_SECRET: secret });
  try {
    const { body } = await postJson(`${w.api}/generate/sync`, { input: { workflow_json: modelFree() } });
    expect(body.status).toBe("completed");
    await hooks.waitFor(2);
    const [first, second] = hooks.received;
    expect(second!.body).toBe(first!.body);
    expect(second!.headers["webhook-id"]).toBe(first!.headers["webhook-id"]);
    // The Standard Webhooks recipe, written independently of the worker's code.
    const id = String(second!.headers["webhook-id"]);
    const ts = String(second!.headers["webhook-timestamp"]);
    const expected = createHmac("sha256", secretBytes).update(`${id}.${ts}.${second!.body}`).digest("base64");
    expect(String(second!.headers["webhook-signature"]).split(" ")).toContain(`v1,${expected}`);
    expect(Math.abs(Number(ts) - Date.now() / 1000)).toBeLessThan(600);
    expect(JSON.parse(second!.body).status).toBe("completed");
  } finally {
    await w.stop();
    await hooks.stop();
  }
});

test("a webhook receiver answering 400 is not retried", async () => {
  const hooks = await new RecordingServer().start();
  hooks.handler = (_req, res) => {
    res.statusCode = 400;
    res.end();
  };
  const w = await startTestWorker({ WEBHOOK_URL: hooks.url });
  try {
    await postJson(`${w.api}/generate/sync`, { input: { workflow_json: modelFree() } });
    await hooks.waitFor(1);
    await w.stop(); // drains deliveries in flight
    expect(hooks.received).toHaveLength(1);
  } finally {
    await hooks.stop();
  }
});

test("janitor: below the free-space bound it removes old outputs and cached inputs, never a running job's", async () => {
  const input = await startHeldImage();
  const w = await startTestWorker({
    DISK_MIN_FREE_MB: String(1024 * 1024 * 1024),
    OUTPUT_MAX_AGE_HOURS: "1",
  });
  try {
    const old = new Date(Date.now() - 3 * 3_600_000);
    const oldDir = join(w.outputDir, "old-request");
    const freshDir = join(w.outputDir, "fresh-request");
    for (const d of [oldDir, freshDir]) {
      await mkdir(d, { recursive: true });
      await writeFile(join(d, "a.png"), Buffer.alloc(1000));
    }
    await utimes(oldDir, old, old);
    const inputDir = join(stack().comfyBaseDir, "input");
    const cached = `url_${randomUUID().replaceAll("-", "")}.png`;
    await writeFile(join(inputDir, cached), Buffer.alloc(10));
    await utimes(join(inputDir, cached), old, old);
    // A running job whose folder is old must stay: it is held in flight (its input downloading) until the sweep
    // is done.
    const id = `janitor-running-${randomUUID()}`;
    const running = postJson(`${w.api}/generate/sync`, {
      input: { request_id: id, workflow_json: loadImageWorkflow(input.url(`${id}.png`)) },
    });
    await input.requested();
    const runningDir = join(w.outputDir, id);
    await mkdir(runningDir, { recursive: true });
    await utimes(runningDir, old, old);

    const report = await w.worker.janitor.sweep();
    const removed = report.removed.map((r) => r.path);
    expect(removed).toContain(oldDir);
    expect(removed).toContain(join(inputDir, cached));
    expect(removed).not.toContain(freshDir);
    expect(removed).not.toContain(runningDir);
    expect(await readdir(w.outputDir)).toEqual(expect.arrayContaining(["fresh-request", id]));
    const metrics = await (await fetch(`${w.api}/metrics`)).text();
    expect(metrics).toMatch(/comfyui_worker_janitor_removed_files_total \d+/);
    input.release();
    expect((await running).body.status).toBe("completed");
  } finally {
    await Promise.all([w.stop(), input.stop()]);
  }
});

test("janitor, second rule: still below the bound, it removes the oldest uploaded outputs, never a failed upload's", async () => {
  const w = await startTestWorker({
    DISK_MIN_FREE_MB: String(1024 * 1024 * 1024),
    OUTPUT_MAX_AGE_HOURS: "24",
  });
  try {
    const uploaded = `janitor-uploaded-${randomUUID()}`;
    const failed = `janitor-failed-${randomUUID()}`;
    const ok = await postJson(`${w.api}/generate/sync`, {
      input: { request_id: uploaded, workflow_json: modelFree() },
    });
    expect(ok.body.status).toBe("completed");
    const bad = await postJson(`${w.api}/generate/sync`, {
      // Storage that refuses connections (a bucket that does not exist would be created by SeaweedFS).
      input: {
        request_id: failed,
        workflow_json: modelFree(),
        // Another endpoint needs the caller's own keys (the worker's never leave for it).
        s3: {
          endpoint_url: `http://127.0.0.1:${await freePort()}`,
          access_key_id: stack().s3AccessKeyId,
          secret_access_key: stack().s3SecretAccessKey,
        },
      },
    });
    expect(bad.body.status).toBe("failed");
    expect(bad.body.output[0].upload_error).toBeTruthy();

    const report = await w.worker.janitor.sweep();
    expect(report.removed).toEqual([
      expect.objectContaining({ path: join(w.outputDir, uploaded), reason: "uploaded" }),
    ]);
    expect(await readdir(w.outputDir)).toEqual([failed]);
  } finally {
    await w.stop();
  }
});

test("SIGTERM during a job: the job completes, its caller gets the answer, the process exits 0", async () => {
  const s = stack();
  const dir = await mkdtemp(join(s.tmpRoot, "sigterm-"));
  const apiPort = await freePort();
  const child = spawn(
    process.execPath,
    ["--import", "tsx", join(repoRoot, "worker/cli.ts"), "start", "--drain-ms", "60000"],
    {
      cwd: repoRoot,
      env: {
        ...process.env,
        WORKER_PORT: String(await freePort()),
        // Any free port: WORKER_PORT + 1 may be taken on a busy machine.
        WORKER_HTTP_PORT: "0",
        WORKER_HOST: "127.0.0.1",
        API_PORT: String(apiPort),
        COMFYUI_URL: s.comfyUrl,
        COMFYUI_BASE_DIR: s.comfyBaseDir,
        OUTPUT_DIR: join(dir, "output"),
        UNSECURED: "true",
        BENCHMARK_SKIP: "true",
        INPUT_URL_ALLOW_PRIVATE: "true",
        LOG_LEVEL: "info",
      },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  const logs: string[] = [];
  child.stdout.on("data", (d: Buffer) => logs.push(d.toString()));
  child.stderr.on("data", (d: Buffer) => logs.push(d.toString()));
  const exited = once(child, "exit");
  /** Resolves once the worker's output matches `pattern`; rejects if it exits first. */
  const logLine = (pattern: RegExp) =>
    new Promise<void>((resolve, reject) => {
      const onData = () => {
        if (!pattern.test(logs.join(""))) return;
        child.stdout.off("data", onData);
        child.off("exit", onExit);
        resolve();
      };
      const onExit = () => reject(new Error(`worker exited before ${pattern}: ${logs.join("")}`));
      child.stdout.on("data", onData);
      child.once("exit", onExit);
      onData();
    });
  const input = await startHeldImage();
  try {
    await logLine(/"msg":"ready/);
    // The job is held in flight (its input downloading) until the worker has begun to drain.
    const id = `sigterm-${randomUUID()}`;
    const answer = postJson(`http://127.0.0.1:${apiPort}/generate/sync`, {
      input: { request_id: id, workflow_json: loadImageWorkflow(input.url(`${id}.png`)) },
    });
    await input.requested();
    child.kill("SIGTERM");
    await logLine(/draining/);
    input.release();
    const { status, body } = await answer;
    expect(status).toBe(200);
    expect(body.status).toBe("completed");
    const [code] = await exited;
    expect(code).toBe(0);
    expect(logs.join("")).toMatch(/draining/);
    // A normal shutdown is no error: the autoscaler hears "worker is shutting down", the log says it at info.
    const lines = logs
      .join("")
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as { level: number; msg: string });
    expect(lines.find((l) => l.msg === "worker is shutting down")).toMatchObject({ level: 30 });
    expect(lines.filter((l) => l.level >= 50)).toEqual([]);
  } finally {
    if (child.exitCode === null) child.kill("SIGKILL");
    await input.stop();
  }
});
