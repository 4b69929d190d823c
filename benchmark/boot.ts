import type { FrozenConfig } from "../config/index.js";
import type { BootBenchmark } from "../worker/boot-benchmark.js";
import { loadBenchmarkPayload, type BenchmarkPayload } from "./payload.js";
import { configuredBenchmark, runBenchmark, updateCachedScore } from "./runner.js";

/** The boot benchmark that the config describes (BENCHMARK_*), for createWorker. */
export function bootBenchmark(config: FrozenConfig, root: string): BootBenchmark {
  let payload: Promise<BenchmarkPayload> | undefined;
  const load = () => (payload ??= loadBenchmarkPayload(config.benchmark, root));
  return {
    workflow: async () => (await load()).make(),
    run: async (parts) =>
      runBenchmark(await configuredBenchmark(config, { ...parts, payload: await load() })),
    saveScore: async (maxPerf, perBackend) => {
      await updateCachedScore(config.benchmark.cacheFile, maxPerf, perBackend);
    },
  };
}
