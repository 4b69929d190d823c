import { loadBenchmarkPayload } from "../../benchmark/payload.js";
import { configuredBenchmark, runBenchmark } from "../../benchmark/runner.js";
import type { FrozenConfig } from "../../config/index.js";
import type { JobEvent } from "../jobs/job.js";
import { createLogger } from "../../lib/logger.js";
import { createPipeline } from "../pipeline.js";
import { delay } from "../../lib/backoff.js";

function bar(fraction: number, width = 30): string {
  const filled = Math.round(Math.max(0, Math.min(1, fraction)) * width);
  return `[${"#".repeat(filled)}${"-".repeat(width - filled)}]`;
}

/** `comfyui-worker benchmark`: runs the boot benchmark now, with a progress bar per round, and prints the score. */
export async function benchmarkCommand(
  config: FrozenConfig,
  root: string,
  opts: { force: boolean },
): Promise<number> {
  const logger = createLogger({ level: "warn", pretty: config.log.pretty });
  const pipeline = createPipeline(config, logger);
  const out = process.stdout;
  const { pool } = pipeline;
  const deadline = Date.now() + config.comfyui.startupTimeoutMs;
  for (;;) {
    await pool.checkAll();
    const missing = pool.backends.filter((b) => !b.up);
    if (missing.length === 0) break;
    if (Date.now() > deadline) {
      out.write(`ComfyUI does not answer at ${missing.map((b) => b.url).join(", ")}\n`);
      return 1;
    }
    await delay(500);
  }
  pool.startEvents();
  // One progress bar redrawn in place; with several backends running at once, a line per finished round.
  const several = pool.backends.length > 1;
  pipeline.jobs.start();
  try {
    const payload = await loadBenchmarkPayload(config.benchmark, root);
    out.write(`benchmark: ${payload.source}\n`);
    const result = await runBenchmark({
      ...(await configuredBenchmark(config, { jobs: pipeline.jobs, pool, payload, logger })),
      force: opts.force,
      onJob: (label, job, backend) => {
        const name = `${several ? `backend ${backend} ` : ""}${label === "warmup" ? "warm-up " : `round ${label.padStart(2)}`}`;
        const inPlace = out.isTTY && !several;
        const draw = (fraction: number, note: string) => {
          if (inPlace) out.write(`\r${name} ${bar(fraction)} ${note}`.padEnd(70));
        };
        draw(0, "");
        job.on("event", (e: JobEvent) => {
          if (e.type === "progress" && e.max > 0) draw(e.value / e.max, `${e.value}/${e.max}`);
        });
        job.once("done", () => {
          const secs = (job.timings.total_ms / 1000).toFixed(2);
          const line = `${name} ${bar(1)} ${job.status === "completed" ? `${secs} s` : `failed: ${job.message}`}`;
          out.write(inPlace ? `\r${line.padEnd(70)}\n` : `${line}\n`);
        });
      },
    });
    out.write(
      result.cached
        ? `max_perf ${result.maxPerf} (cached in ${config.benchmark.cacheFile}; --force runs it again)\n`
        : `max_perf ${result.maxPerf} after ${result.rounds.length} round(s): ${result.rounds.join(", ")}${
            several ? ` (per backend: ${result.perBackend.join(", ")})` : ""
          }\n`,
    );
    return 0;
  } catch (err) {
    out.write(`benchmark failed: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  } finally {
    await pipeline.jobs.drain(1_000);
    pool.stop();
    pipeline.storage.close();
  }
}
