import { existsSync } from "node:fs";
import { join } from "node:path";
import { SEED_BENCHMARK } from "../../config/index.js";
import type { ImagePrepare, StockTemplatePrepare } from "../../config/prepare.js";
import { checkBundleSources } from "../../lib/bundle-fingerprint.js";
import { DIST_PROGRAM } from "../../lib/install.js";
import { bundleProgram, distProgram, programFromSources } from "./build.js";
import { ensureCertificate } from "./certificate.js";
import { PrepareError, type PrepareContext } from "./context.js";
import { provision } from "./provisioning.js";
import { installFromRepository } from "./self-install.js";
import {
  awaitWorkflowConversion,
  checkCertificateFiles,
  chooseApiPort,
  findComfyui,
  stockProgramDefaults,
} from "./stock-template.js";

/** What the caller starts: `node <program> start`, with `env` added to its environment. */
export interface Prepared {
  program: string;
  env: Record<string, string>;
}

/**
 * Our image, before the worker: the PYWORKER_REPO install, the routed port's certificate, provisioning; then the
 * program in WORKER_DIR and the worker's settings that the image's layout implies, where the operator set none.
 */
export async function prepareImage(
  config: ImagePrepare,
  ctx: PrepareContext,
  packageName: string,
): Promise<Prepared> {
  await installFromRepository(config, ctx, packageName);
  await ensureCertificate(config, ctx);
  await provision(config.provisioning, ctx);
  const w = config.worker;
  const env: Record<string, string> = {};
  // The worker starts ComfyUI itself (in COMFYUI_DIR, one per GPU with COMFYUI_PER_GPU), and writes its log file
  // for the instance portal.
  if (w.comfyuiLaunch === undefined) env.COMFYUI_LAUNCH = "true";
  if (w.logFile === undefined) env.LOG_FILE = join(w.logDir, "comfyui-worker.log");
  // The score outlives the container's restarts in the workspace volume.
  if (w.benchmarkCacheFile === undefined) env.BENCHMARK_CACHE_FILE = join(config.workspace, ".has_benchmark");
  // A seed user's custom benchmark in the stock template's clone, if the workspace still holds one: the worker
  // looks for that layout in its own folder only (and for the stock wrapper's benchmark on its own).
  const seed = join(config.workspace, "vast-pyworker", SEED_BENCHMARK);
  if (w.benchmarkJsonPath === undefined && existsSync(seed)) {
    env.BENCHMARK_JSON_PATH = seed;
    ctx.log.info("benchmark", `using the seed's custom benchmark ${seed}`);
  }
  return { program: installedProgram(config.workerDir), env };
}

/** The program of WORKER_DIR: its bundle when built from its sources, else its build in dist/. */
function installedProgram(workerDir: string): string {
  if (checkBundleSources(workerDir).ok) return bundleProgram(workerDir);
  if (existsSync(distProgram(workerDir))) return distProgram(workerDir);
  throw new PrepareError(
    "no_worker",
    `no worker in WORKER_DIR=${workerDir} (no bundle built from its sources, no ${DIST_PROGRAM})`,
  );
}

/**
 * The stock "ComfyUI (Serverless)" template, where this repository is PYWORKER_REPO and `root` the clone: the
 * program (the bundle, or a build of the sources), ComfyUI's folders, the stock API wrapper's conversion and port,
 * the certificate start_server.sh signed, and the stock supervisor program's stop window and log file.
 */
export async function prepareStockTemplate(
  config: StockTemplatePrepare,
  ctx: PrepareContext,
  root: string,
): Promise<Prepared> {
  const program = await programFromSources(root, ctx);
  const env = { ...findComfyui(config, ctx) };
  await awaitWorkflowConversion(config, ctx);
  Object.assign(env, checkCertificateFiles(config));
  Object.assign(env, await chooseApiPort(config, ctx));
  Object.assign(env, stockProgramDefaults(config));
  return { program, env };
}
