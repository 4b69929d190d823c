import { randomUUID } from "node:crypto";
import { join } from "node:path";
import { freePort, type Service } from "../../scripts/services/child.js";
import { pngPixelsHash } from "../../scripts/services/png.js";
import { ensureComfyUI, startComfyUI, type ComfyInstall } from "../../scripts/services/comfyui.js";
import type { Job } from "../../worker/jobs/job.js";
import type { BenchParts } from "./parts.js";
import { generateSync, startWorker, workerEnv, type SyncAnswer } from "./parts.js";

/**
 * One worker over one or two CPU ComfyUI backends, each limited to one thread (as a GPU is one device per
 * backend): the rate at which a burst of CPU-heavy model-free jobs clears, and what a backend killed mid-burst
 * costs. Uses its own two backends (not the parts' ComfyUI, which has every thread).
 */
export interface ScalingRun {
  jobs: number;
  /** Jobs per minute with one backend and with two. */
  oneRate: number;
  twoRate: number;
  /** Every output of both bursts has the same image data (one workflow, any backend). */
  identical: boolean;
  /** The kill run: jobs that completed, failed retryable on the killed backend, and failed otherwise. */
  killed: { completed: number; failedOnKilled: number; failedOtherwise: number };
}

interface Backend {
  port: number;
  baseDir: string;
  service?: Service & { url: string };
}

/**
 * A blur of one 1024×1024 image: about a second of one CPU thread, no model. The first node gets an input of its own
 * that ComfyUI ignores when running it but counts in its cache key (as the worker's output-node nonce), so that
 * every job computes the whole graph, and yet every job's image is the same.
 */
function heavyJob(): Record<string, unknown> {
  return {
    "1": {
      class_type: "EmptyImage",
      inputs: { width: 1024, height: 1024, batch_size: 1, color: 3355443, nonce: randomUUID() },
    },
    "2": { class_type: "ImageBlur", inputs: { image: ["1", 0], blur_radius: 20, sigma: 6.0 } },
    "3": { class_type: "SaveImage", inputs: { images: ["2", 0], filename_prefix: "scaling" } },
  };
}

export async function startScalingBackends(parts: BenchParts): Promise<{
  install: ComfyInstall;
  backends: Backend[];
  start(b: Backend): Promise<void>;
  stop(): Promise<void>;
}> {
  const install = await ensureComfyUI();
  const backends: Backend[] = [
    { port: await freePort(), baseDir: join(parts.dir, "scaling-0") },
    { port: await freePort(), baseDir: join(parts.dir, "scaling-1") },
  ];
  const start = async (b: Backend) => {
    b.service = await startComfyUI({
      install,
      host: "127.0.0.1",
      port: b.port,
      baseDir: b.baseDir,
      inputDir: join(backends[0]!.baseDir, "input"),
      logFile: join(b.baseDir, "comfyui.log"),
      threads: 1,
    });
  };
  await Promise.all(backends.map(start));
  return {
    install,
    backends,
    start,
    stop: async () => void (await Promise.all(backends.map((b) => b.service?.stop()))),
  };
}

function envFor(parts: BenchParts, backends: Backend[]): Record<string, string> {
  return workerEnv(parts, {
    COMFYUI_URL: "",
    COMFYUI_URLS: backends.map((b) => b.service!.url).join(","),
    COMFYUI_INPUT_DIR: join(backends[0]!.baseDir, "input"),
    COMFYUI_OUTPUT_DIR: backends.map((b) => join(b.baseDir, "output")).join(","),
    OUTPUT_DIR: join(parts.dir, "scaling-output"),
    MAX_QUEUE_TIME: "100000",
  });
}

async function burst(api: string, jobs: number): Promise<{ seconds: number; answers: SyncAnswer[] }> {
  const send = () => generateSync(api, { workflow_json: heavyJob() }, { timeoutMs: 900_000 });
  const t = performance.now();
  const answers = await Promise.all(Array.from({ length: jobs }, send));
  return { seconds: (performance.now() - t) / 1000, answers };
}

/** The rate of one backend, then of two (in `order`), each after two warm-up jobs per backend; then the kill run. */
export async function measureScaling(
  parts: BenchParts,
  set: Awaited<ReturnType<typeof startScalingBackends>>,
  jobs: number,
  twoFirst: boolean,
): Promise<ScalingRun> {
  const rates: Record<"one" | "two", number> = { one: 0, two: 0 };
  const hashes = new Set<string>();
  for (const mode of twoFirst ? (["two", "one"] as const) : (["one", "two"] as const)) {
    const { worker } = await startWorker(envFor(parts, mode === "one" ? [set.backends[0]!] : set.backends));
    try {
      await burst(worker.apiUrl()!, mode === "one" ? 2 : 4); // warm-up: two jobs per backend
      const { seconds, answers } = await burst(worker.apiUrl()!, jobs);
      const failed = answers.filter((a) => a.status !== "completed");
      if (failed.length > 0)
        throw new Error(`${failed.length} job(s) of the ${mode}-backend burst did not complete`);
      rates[mode] = (jobs / seconds) * 60;
      for (const a of answers) hashes.add(await pngPixelsHash(a.output[0]!.local_path));
    } finally {
      await worker.stop(10_000);
    }
  }

  // Kill run: backend 1 is killed once a job runs on it; then started again for the next repetition.
  const { worker } = await startWorker(envFor(parts, set.backends));
  try {
    const victim = set.backends[1]!;
    const running = new Promise<void>((resolve) => {
      const off = worker.events.on("job.created", (job: Job) => {
        job.on("event", (e: { type: string }) => {
          if (e.type === "executing" && job.backend === 1) {
            off();
            resolve();
          }
        });
      });
    });
    const result = burst(worker.apiUrl()!, jobs);
    await running;
    victim.service!.process.kill("SIGKILL");
    const { answers } = await result;
    await victim.service!.stop();
    const onKilled = (a: SyncAnswer) => worker.jobs.get(a.id)?.backend === 1;
    const failed = answers.filter((a) => a.status !== "completed");
    const killed = {
      completed: answers.length - failed.length,
      failedOnKilled: failed.filter((a) => onKilled(a) && a.error?.code === "comfyui_unavailable").length,
      failedOtherwise: failed.filter((a) => !(onKilled(a) && a.error?.code === "comfyui_unavailable")).length,
    };
    await set.start(victim);
    return {
      jobs,
      oneRate: rates.one,
      twoRate: rates.two,
      identical: hashes.size === 1,
      killed,
    };
  } finally {
    await worker.stop(10_000);
  }
}
