import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { createWriteStream } from "node:fs";
import { mkdtemp, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { freePort } from "../../scripts/services/child.js";
import { runInstallScript } from "../../scripts/services/install.js";
import { repoRoot } from "../harness/worker.js";

export interface ReferenceWorker {
  /** Where callers reach it (its WORKER_PORT). */
  base: string;
  /** Its plain-HTTP listener (WORKER_HTTP_PORT): /session/end without TLS. */
  plainHttp: string;
  logFile: string;
  /** Rejects, with the end of its log, if the process exits before `stop()`. */
  failed: Promise<never>;
  stop(): Promise<void>;
}

/**
 * Starts test/conformance/reference_worker.py (vastai's worker library, from the tools venv the stack installs)
 * in front of `modelServerUrl`, reporting to `reportAddr` as container `containerId`. Its max_perf is `maxPerf`,
 * read from the library's benchmark cache file instead of benchmarking.
 */
export async function startReferenceWorker(opts: {
  tmpRoot: string;
  modelServerUrl: string;
  reportAddr: string;
  containerId: number;
  masterToken: string;
  maxPerf: number;
  maxQueueTimeS: number;
}): Promise<ReferenceWorker> {
  const bin = await runInstallScript("install-tools.sh");
  const dir = await mkdtemp(join(opts.tmpRoot, "reference-"));
  await writeFile(join(dir, ".has_benchmark"), `${opts.maxPerf.toFixed(1)}\n`);
  const port = await freePort();
  const httpPort = await freePort();
  const logFile = join(dir, "reference.log");
  const log = createWriteStream(logFile);
  await once(log, "open");
  const child: ChildProcess = spawn(
    join(bin, "python"),
    [join(repoRoot, "test/conformance/reference_worker.py")],
    {
      cwd: dir,
      stdio: ["ignore", log, log],
      env: {
        PATH: process.env.PATH ?? "/usr/bin:/bin",
        HOME: process.env.HOME ?? dir,
        PYTHONUNBUFFERED: "1",
        MODEL_SERVER_URL: opts.modelServerUrl,
        MAX_QUEUE_TIME: String(opts.maxQueueTimeS),
        WORKER_PORT: String(port),
        WORKER_HTTP_PORT: String(httpPort),
        [`VAST_TCP_PORT_${port}`]: String(port),
        PUBLIC_IPADDR: "127.0.0.1",
        REPORT_ADDR: opts.reportAddr,
        CONTAINER_ID: String(opts.containerId),
        MASTER_TOKEN: opts.masterToken,
        UNSECURED: "false",
        USE_SSL: "false",
      },
    },
  );
  const exited = once(child, "exit");
  let stopping = false;
  const failed = exited.then(async ([code, signal]) => {
    if (stopping) return new Promise<never>(() => undefined);
    const tail = (await readFile(logFile, "utf8").catch(() => "")).split("\n").slice(-30).join("\n");
    throw new Error(`the reference worker exited (${String(signal ?? code)}); end of ${logFile}:\n${tail}`);
  });
  failed.catch(() => undefined);
  return {
    failed,
    base: `http://127.0.0.1:${port}`,
    plainHttp: `http://127.0.0.1:${httpPort}`,
    logFile,
    async stop() {
      stopping = true;
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
        await exited;
        clearTimeout(timer);
      }
      log.end();
    },
  };
}
