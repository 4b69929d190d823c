import { loadBenchmarkPayload } from "../../benchmark/payload.js";
import { hardwareKey, runBenchmark } from "../../benchmark/runner.js";
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
  const deadline = Date.now() + config.comfyui.startupTimeoutMs;
  for (;;) {
    try {
      await pipeline.client.systemStats(AbortSignal.timeout(5_000));
      break;
    } catch {
      if (Date.now() > deadline) {
        out.write(`ComfyUI does not answer at ${config.comfyui.url}\n`);
        return 1;
      }
      await delay(500);
    }
  }
  pipeline.events.start();
  pipeline.jobs.start();
  try {
    const payload = await loadBenchmarkPayload(config.benchmark, root);
    out.write(`benchmark: ${payload.source}\n`);
    const result = await runBenchmark({
      jobs: pipeline.jobs,
      payload,
      logger,
      outputDir: config.outputDir,
      cacheFile: config.benchmark.cacheFile,
      hardwareKey: await hardwareKey(pipeline.client, config.benchmark.gpuKey),
      minRounds: config.benchmark.minRounds,
      maxRounds: config.benchmark.maxRounds,
      tolerance: config.benchmark.tolerance,
      force: opts.force,
      onJob: (label, job) => {
        const name = label === "warmup" ? "warm-up " : `round ${label.padStart(2)}`;
        const draw = (fraction: number, note: string) => {
          if (out.isTTY) out.write(`\r${name} ${bar(fraction)} ${note}`.padEnd(70));
        };
        draw(0, "");
        job.on("event", (e: JobEvent) => {
          if (e.type === "progress" && e.max > 0) draw(e.value / e.max, `${e.value}/${e.max}`);
        });
        job.once("done", () => {
          const secs = (job.timings.total_ms / 1000).toFixed(2);
          const line = `${name} ${bar(1)} ${job.status === "completed" ? `${secs} s` : `failed: ${job.message}`}`;
          out.write(out.isTTY ? `\r${line.padEnd(70)}\n` : `${line}\n`);
        });
      },
    });
    out.write(
      result.cached
        ? `max_perf ${result.maxPerf} (cached in ${config.benchmark.cacheFile}; --force runs it again)\n`
        : `max_perf ${result.maxPerf} after ${result.rounds.length} round(s): ${result.rounds.join(", ")}\n`,
    );
    return 0;
  } catch (err) {
    out.write(`benchmark failed: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  } finally {
    await pipeline.jobs.drain(1_000);
    pipeline.events.stop();
    pipeline.storage.close();
  }
}
