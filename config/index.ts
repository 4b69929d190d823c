import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { DEFAULT_COMFYUI_PORT, parseComfyArgs } from "./comfyui-args.js";
import { ConfigError, EnvReader, type Env } from "./env.js";
import { launchComfyDir, planLaunch, type LaunchConfig, type LaunchHost } from "./launch.js";
import { parseModelsList, type ModelToWarm } from "./models.js";
import { redactUrl, redactUrlKeepingPath } from "../lib/redact.js";

export { ConfigError } from "./env.js";
export type { LaunchConfig, LaunchedInstance, LaunchHost } from "./launch.js";

export interface S3Settings {
  accessKeyId?: string;
  secretAccessKey?: string;
  endpointUrl?: string;
  bucketName?: string;
  region?: string;
}

/** How a job's URL and data: inputs are fetched and cached. */
export interface InputSettings {
  /** INPUT_URL_ALLOW_PRIVATE: input URLs may reach private and loopback addresses. */
  allowPrivate: boolean;
  maxBytes: number;
  timeoutMs: number;
  cacheMaxBytes: number;
  /** Cached input files kept at most, whatever their size. */
  cacheMaxFiles: number;
  /** URL and data: inputs one job may have fetched (MAX_INPUT_URLS); more is a 400 before anything is fetched. */
  maxPerJob: number;
  /** Downloads running at once, worker-wide (INPUT_DOWNLOAD_CONCURRENCY); the others wait for a slot. */
  concurrency: number;
}

export interface ComfyBackendConfig {
  url: string;
  outputDir: string;
}

export interface Config {
  /** The routed port: the Vast router's signed envelope. */
  worker: { host: string; port: number; publicUrl: string; useSsl: boolean; sslCert: string; sslKey: string };
  /**
   * The plain-HTTP port (WORKER_HTTP_PORT, upstream's default WORKER_PORT + 1), on the routed port's host: POST
   * /session/end only, without TLS, for internal calls.
   */
  plainHttp: { port: number };
  /**
   * What SIGTERM does: running jobs get `drainMs` to finish. `stopWaitS` is how long the process manager waits
   * after its SIGTERM before it kills the worker (supervisor's stopwaitsecs, STOP_WAIT_S), when it is known.
   */
  shutdown: { drainMs: number; stopWaitS?: number };
  /** The local API port: bare `{input}` and /docs, for interactive use over an SSH tunnel. */
  api: {
    host: string;
    port: number;
    enabled: boolean;
    /** Host names the local API answers besides loopback's (API_ALLOWED_HOSTS), lower case, without port. */
    allowedHosts: string[];
  };
  comfyui: {
    /**
     * The ComfyUI servers this worker drives (COMFYUI_URLS, or the one COMFYUI_URL), typically one per GPU, each
     * with its own output folder on this machine (outputs are moved from there).
     */
    backends: ComfyBackendConfig[];
    /**
     * The input folder every backend reads: inputs are downloaded before a backend is chosen, so all of them must
     * share it (start every ComfyUI with the same --input-directory).
     */
    inputDir: string;
    startupTimeoutMs: number;
    requestTimeoutMs: number;
    /** How often a prompt's state is asked (jobs API, else /history) while the WebSocket is quiet. */
    historyPollMs: number;
  };
  /**
   * COMFYUI_LAUNCH=true: the ComfyUIs the worker starts, restarts and stops (worker/launcher/), instance i being
   * backend i. Undefined: ComfyUI is someone else's to run.
   */
  launch?: LaunchConfig;
  /** Where finished outputs are kept: `<outputDir>/<request_id>/`. */
  outputDir: string;
  jobs: {
    timeoutMs: number;
    /**
     * The longest a running prompt may go without an execution event or a progress change before it is interrupted
     * as stalled (a cap on the timeout derived from the job's predicted time); 0: no watchdog.
     */
    stallTimeoutMs: number;
    /**
     * A backend whose free VRAM, read after each job, fell after each of this many jobs in a row (by more than
     * 10 % of its total in all) has drifted: it is drained and restarted where the worker started it; 0: not watched.
     */
    vramDriftJobs: number;
    /** Prompts kept submitted to ComfyUI at once (the one running plus those queued behind it). */
    maxInFlightPrompts: number;
    resultRetentionMs: number;
    /** Finished jobs kept at most (oldest evicted first). */
    resultRetentionMax: number;
    /** Total size of the result documents kept at most. */
    resultRetentionMaxBytes: number;
    /** Job documents in the operator's bucket, so every worker of an endpoint answers for every job. */
    shared: boolean;
    /** Key prefix of the job documents ("" puts them beside the outputs: `<request_id>/job.json`). */
    sharedPrefix: string;
    /** How often a running job's document is rewritten; silent for 3 of these, its owner is taken as lost. */
    heartbeatMs: number;
  };
  inputs: InputSettings;
  /** Models named by reference (https://, s3://, hf://) in a loader's input, downloaded on demand. */
  models: {
    /** ComfyUI's models folder (`<base directory>/models`, or COMFYUI_MODELS_DIR); undefined: references refused. */
    dir: string | undefined;
    /** One model's bytes at most (MODEL_MAX_BYTES). */
    maxBytes: number;
    /** The downloaded models kept at most, in bytes; least recently used evicted first (MODEL_CACHE_MAX_BYTES). */
    cacheMaxBytes: number;
    /** One model's download, whole (MODEL_DOWNLOAD_TIMEOUT_MS). */
    timeoutMs: number;
    /** Where hf://<org>/<repo>/<path> resolves (HF_ENDPOINT), with HF_TOKEN as its bearer token. */
    hfEndpoint: string;
    hfToken: string | undefined;
    /** Models fetched at start, before the benchmark (MODELS); a failure is the worker's error_msg. */
    warm: ModelToWarm[];
  };
  /** `routedMaxBodyBytes` bounds the routed port, open to anyone: smaller than the local API's `maxBodyBytes`. */
  limits: {
    maxBodyBytes: number;
    routedMaxBodyBytes: number;
    maxWorkflowNodes: number;
    /** What a JSON body may hold on either port, checked on its bytes before it is parsed. */
    jsonShape: { maxDepth: number; maxValues: number };
  };
  disk: { minFreeBytes: number; outputMaxAgeMs: number; janitorIntervalMs: number };
  s3: S3Settings & { presignExpirySeconds: number; forcePathStyle: boolean; partSizeBytes: number };
  webhook: {
    url?: string;
    timeoutMs: number;
    maxAttempts: number;
    secret?: string;
    signingKey?: string;
    /** Caller-chosen webhook and session callback URLs may reach private addresses (WEBHOOK_ALLOW_PRIVATE). */
    allowPrivate: boolean;
  };
  autoscaler: {
    unsecured: boolean;
    reportAddrs: string[];
    masterToken: string;
    containerId: number;
    legacySignatures: boolean;
    /** A signed auth_data.url must name this worker's advertised URL (AUTH_CHECK_URL). */
    checkUrl: boolean;
    replayWindow: number;
    maxQueueTimeS: number;
    reportIntervalMs: number;
    heartbeatIntervalMs: number;
    /** Written by /pyworker/update, as upstream. */
    updateFlagFile: string;
    /** A session's lifetime at most, and how far past its last request it lives (SESSION_MAX_LIFETIME_S). */
    sessionMaxLifetimeS: number;
  };
  benchmark: {
    jsonPath?: string;
    /** The clone's own misc/benchmark.json: the first place looked (a fork's custom benchmark). */
    defaultJsonPath: string;
    /** The seed's layout in the clone (PyWorker's comfyui-json worker folder), looked at with the first. */
    seedJsonPath: string;
    /** What the stock image's convert-workflows.sh links to the first provisioned workflow: looked at last. */
    wrapperJsonPath: string;
    promptsPath: string;
    width: number;
    height: number;
    steps: number;
    cacheFile: string;
    maxRounds: number;
    minRounds: number;
    tolerance: number;
    skip: boolean;
    /** max_perf follows the throughput measured on completed jobs (false: the boot benchmark's score stays). */
    liveScore: boolean;
    /** The live score stays within this factor of the boot benchmark's (LIVE_SCORE_BAND). */
    liveScoreBand: number;
    gpuKey: string;
  };
  /** `file`: JSON lines appended there besides stdout (LOG_FILE), kept when stdout's reader is gone. */
  log: { level: string; pretty: boolean; file?: string };
}

type DeepReadonly<T> = { readonly [K in keyof T]: T[K] extends object ? DeepReadonly<T[K]> : T[K] };
export type FrozenConfig = DeepReadonly<Config>;

export function deepFreeze<T>(value: T): T {
  if (value && typeof value === "object") {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}

/**
 * The routed port and the URL this worker advertises on it (PUBLIC_IPADDR and Vast's public port for WORKER_PORT;
 * https with USE_SSL): the autoscaler knows the worker by it, in its reports and in a start-up failure's alike.
 */
export function advertisedAddress(e: EnvReader): { workerPort: number; useSsl: boolean; publicUrl: string } {
  const workerPort = e.int("WORKER_PORT", 3000, { min: 0, max: 65535 });
  const useSsl = e.bool("USE_SSL", false);
  const publicIp = e.optional("PUBLIC_IPADDR") ?? "127.0.0.1";
  const publicPort = e.int(`VAST_TCP_PORT_${workerPort}`, workerPort, { min: 0, max: 65535 });
  return { workerPort, useSsl, publicUrl: `${useSsl ? "https" : "http"}://${publicIp}:${publicPort}` };
}

/** The routed port's certificate and key (USE_SSL), which Vast signs for the instance. */
export function sslFiles(e: EnvReader): { sslCert: string; sslKey: string } {
  return {
    // Not SSL_CERT_FILE: OpenSSL, curl and Python read that as their list of trusted CAs.
    sslCert: e.string("WORKER_SSL_CERT_FILE", "/etc/instance.crt"),
    sslKey: e.string("WORKER_SSL_KEY_FILE", "/etc/instance.key"),
  };
}

/** Where the local API listens, and whether it does. */
export function apiAddress(e: EnvReader): { host: string; port: number; enabled: boolean } {
  return {
    host: e.string("API_HOST", "127.0.0.1"),
    port: e.int("API_PORT", 18288, { min: 0, max: 65535 }),
    enabled: e.bool("API_ENABLED", true),
  };
}

/** Where /worker_status/ goes (REPORT_ADDR, each in turn) and who sends it. */
export function reportTarget(e: EnvReader): {
  reportAddrs: string[];
  masterToken: string;
  containerId: number;
} {
  return {
    reportAddrs: (e.optional("REPORT_ADDR") ?? "")
      .split(",")
      .map((s) => s.trim().replace(/\/+$/, ""))
      .filter(Boolean),
    masterToken: e.string("MASTER_TOKEN", ""),
    containerId: e.int("CONTAINER_ID", 0),
  };
}

/**
 * A seed user's custom benchmark in the layout of Vast's PyWorker (its comfyui-json worker), relative to the
 * PyWorker clone: the worker looks for it in its own installation, and our image in the seed's clone too.
 */
export const SEED_BENCHMARK = join("workers", "comfyui-json", "misc", "benchmark.json");

/**
 * Parses the environment once into a typed, validated, frozen config. Throws ConfigError naming the variable.
 * `root` is the worker's installation folder (for misc/ files and the benchmark cache). `host` answers what
 * COMFYUI_LAUNCH=true needs to know of the machine (worker/launcher/host.ts `systemHost()`).
 */
export function loadConfig(env: Env, root: string = process.cwd(), host: LaunchHost = noHost): FrozenConfig {
  const e = new EnvReader(env);
  const { workerPort, useSsl, publicUrl } = advertisedAddress(e);
  const stopWaitS = e.optional("STOP_WAIT_S") === undefined ? undefined : e.int("STOP_WAIT_S", 0, { min: 3 });
  // ComfyUI's own arguments describe what it really does; COMFYUI_BASE_DIR is where we expect it by default.
  const comfyArgs = parseComfyArgs(e.optional("COMFYUI_ARGS"));
  // A ComfyUI the worker starts runs from COMFYUI_DIR, where its folders are unless told otherwise.
  const comfyDir = e.bool("COMFYUI_LAUNCH", false) ? launchComfyDir(e) : undefined;
  const comfyBase = comfyArgs.baseDir ?? e.optional("COMFYUI_BASE_DIR") ?? comfyDir;
  const comfyInput =
    e.optional("COMFYUI_INPUT_DIR") ??
    comfyArgs.inputDir ??
    (comfyBase ? join(comfyBase, "input") : undefined);
  const comfyOutputs =
    e.list("COMFYUI_OUTPUT_DIR") ??
    (comfyArgs.outputDir !== undefined ? [comfyArgs.outputDir] : undefined) ??
    (comfyBase ? [join(comfyBase, "output")] : undefined);
  const comfyModels = e.optional("COMFYUI_MODELS_DIR") ?? (comfyBase ? join(comfyBase, "models") : undefined);
  if (comfyInput === undefined) throw new ConfigError("COMFYUI_INPUT_DIR", "set it, or COMFYUI_BASE_DIR");
  if (comfyOutputs === undefined) throw new ConfigError("COMFYUI_OUTPUT_DIR", "set it, or COMFYUI_BASE_DIR");
  const plan =
    comfyDir === undefined
      ? undefined
      : planLaunch(
          e,
          comfyArgs,
          comfyDir,
          { base: comfyBase!, input: resolve(comfyInput), outputs: comfyOutputs },
          host,
        );
  const backends = plan?.perGpu
    ? comfyBackends(e, undefined, plan.perGpu.outputDirs, plan.perGpu.urls)
    : comfyBackends(e, plan?.port ?? comfyArgs.port, comfyOutputs);
  const webhookSecret = e.optional("WEBHOOK_SECRET");
  const webhookSigningKey = e.optional("WEBHOOK_SIGNING_KEY");

  const config: Config = {
    worker: {
      host: e.string("WORKER_HOST", "0.0.0.0"),
      port: workerPort,
      publicUrl,
      useSsl,
      ...sslFiles(e),
    },
    plainHttp: {
      // WORKER_PORT=0 (any free port) makes this one any free port too.
      port: e.int("WORKER_HTTP_PORT", workerPort > 0 && workerPort < 65535 ? workerPort + 1 : 0, {
        min: 0,
        max: 65535,
      }),
    },
    shutdown: {
      // Under a known stop window, 2 s of it are left for the webhooks' and the autoscaler's last words.
      drainMs: e.int("DRAIN_MS", stopWaitS === undefined ? 60_000 : (stopWaitS - 2) * 1000, { min: 0 }),
      ...(stopWaitS !== undefined && { stopWaitS }),
    },
    api: {
      ...apiAddress(e),
      allowedHosts: (e.list("API_ALLOWED_HOSTS") ?? []).map((h) => {
        // Names only (any port is accepted): a port or scheme here would never match a Host header's name.
        if (!/^(\[[0-9a-f:.]+\]|[a-z0-9.-]+)$/i.test(h)) {
          throw new ConfigError(
            "API_ALLOWED_HOSTS",
            `${JSON.stringify(h)} is not a host name (no scheme or port)`,
          );
        }
        return h.toLowerCase();
      }),
    },
    comfyui: {
      backends,
      inputDir: resolve(comfyInput),
      startupTimeoutMs: e.int("COMFYUI_STARTUP_TIMEOUT_MS", 300_000, { min: 0 }),
      requestTimeoutMs: e.int("COMFYUI_REQUEST_TIMEOUT_MS", 30_000, { min: 100 }),
      historyPollMs: e.int("COMFYUI_HISTORY_POLL_MS", 1_000, { min: 10 }),
    },
    ...(plan && { launch: plan.launch }),
    outputDir: resolve(e.optional("OUTPUT_DIR") ?? backends[0]!.outputDir),
    jobs: {
      timeoutMs: e.int("JOB_TIMEOUT_MS", 600_000, { min: 1 }),
      stallTimeoutMs: e.int("STALL_TIMEOUT_MS", 600_000, { min: 0 }),
      vramDriftJobs: e.int("VRAM_DRIFT_JOBS", 8, { min: 0 }),
      maxInFlightPrompts: e.int("MAX_INFLIGHT_PROMPTS", 2, { min: 1, max: 64 }),
      resultRetentionMs: e.int("RESULT_RETENTION_MS", 3_600_000, { min: 0 }),
      resultRetentionMax: e.int("RESULT_RETENTION_MAX", 1_000, { min: 0 }),
      resultRetentionMaxBytes: e.int("RESULT_RETENTION_MAX_BYTES", 64 * 1024 * 1024, { min: 0 }),
      shared: e.bool("SHARED_JOBS", true),
      sharedPrefix: e.string("SHARED_JOBS_PREFIX", ""),
      heartbeatMs: e.int("JOB_HEARTBEAT_MS", 5_000, { min: 100 }),
    },
    inputs: {
      allowPrivate: e.bool("INPUT_URL_ALLOW_PRIVATE", false),
      maxBytes: e.int("INPUT_URL_MAX_BYTES", 256 * 1024 * 1024, { min: 1 }),
      timeoutMs: e.int("INPUT_URL_TIMEOUT_MS", 120_000, { min: 1 }),
      cacheMaxBytes: e.int("INPUT_CACHE_MAX_BYTES", 2 * 1024 * 1024 * 1024, { min: 0 }),
      cacheMaxFiles: e.int("INPUT_CACHE_MAX_FILES", 1_000, { min: 0 }),
      maxPerJob: e.int("MAX_INPUT_URLS", 64, { min: 0 }),
      concurrency: e.int("INPUT_DOWNLOAD_CONCURRENCY", 8, { min: 1, max: 1_024 }),
    },
    models: {
      dir: comfyModels === undefined ? undefined : resolve(comfyModels),
      maxBytes: e.int("MODEL_MAX_BYTES", 32 * 1024 ** 3, { min: 1 }),
      cacheMaxBytes: e.int("MODEL_CACHE_MAX_BYTES", 64 * 1024 ** 3, { min: 0 }),
      timeoutMs: e.int("MODEL_DOWNLOAD_TIMEOUT_MS", 3_600_000, { min: 1 }),
      hfEndpoint: e.url("HF_ENDPOINT") ?? "https://huggingface.co",
      hfToken: e.optional("HF_TOKEN"),
      warm: parseModelsList(e.optional("MODELS"), (path) => readFileSync(path, "utf8")),
    },
    limits: {
      maxBodyBytes: e.int("MAX_BODY_BYTES", 64 * 1024 * 1024, { min: 1024 }),
      routedMaxBodyBytes: e.int("ROUTED_MAX_BODY_BYTES", 16 * 1024 * 1024, { min: 1024 }),
      maxWorkflowNodes: e.int("MAX_WORKFLOW_NODES", 5_000, { min: 1 }),
      // A 5,000-node workflow holds about 60,000 values; a parse of 250,000 empty objects blocks the event loop ~30 ms.
      jsonShape: {
        maxDepth: e.int("MAX_JSON_DEPTH", 64, { min: 8, max: 10_000 }),
        maxValues: e.int("MAX_JSON_VALUES", 250_000, { min: 1_000 }),
      },
    },
    disk: {
      minFreeBytes: e.int("DISK_MIN_FREE_MB", 512, { min: 0 }) * 1024 * 1024,
      outputMaxAgeMs: e.number("OUTPUT_MAX_AGE_HOURS", 24, { min: 0 }) * 3_600_000,
      janitorIntervalMs: e.int("JANITOR_INTERVAL_MS", 300_000, { min: 1_000 }),
    },
    s3: {
      accessKeyId: e.optional("S3_ACCESS_KEY_ID"),
      secretAccessKey: e.optional("S3_SECRET_ACCESS_KEY"),
      endpointUrl: e.url("S3_ENDPOINT_URL"),
      bucketName: e.optional("S3_BUCKET_NAME"),
      region: e.optional("S3_REGION"),
      presignExpirySeconds: e.int("S3_PRESIGN_EXPIRY_SECONDS", 7 * 24 * 3600, { min: 1, max: 7 * 24 * 3600 }),
      forcePathStyle: e.bool("S3_FORCE_PATH_STYLE", true),
      partSizeBytes: e.int("S3_PART_SIZE_BYTES", 8 * 1024 * 1024, { min: 5 * 1024 * 1024 }),
    },
    webhook: {
      url: e.url("WEBHOOK_URL"),
      timeoutMs: e.int("WEBHOOK_TIMEOUT_MS", 10_000, { min: 1 }),
      maxAttempts: e.int("WEBHOOK_MAX_ATTEMPTS", 5, { min: 1, max: 50 }),
      allowPrivate: e.bool("WEBHOOK_ALLOW_PRIVATE", false),
      ...(webhookSecret !== undefined && { secret: webhookSecret }),
      ...(webhookSigningKey !== undefined && { signingKey: webhookSigningKey }),
    },
    autoscaler: {
      unsecured: e.bool("UNSECURED", false),
      ...reportTarget(e),
      legacySignatures: e.bool("SIGNATURE_LEGACY", false),
      checkUrl: e.bool("AUTH_CHECK_URL", true),
      replayWindow: e.int("REQNUM_REPLAY_WINDOW", 1000, { min: 0 }),
      maxQueueTimeS: e.number("MAX_QUEUE_TIME", 10, { min: 0 }),
      reportIntervalMs: e.int("REPORT_INTERVAL_MS", 1_000, { min: 10 }),
      heartbeatIntervalMs: e.int("REPORT_HEARTBEAT_MS", 10_000, { min: 10 }),
      updateFlagFile: e.string("PYWORKER_UPDATE_FLAG_FILE", "/.force_update"),
      sessionMaxLifetimeS: e.number("SESSION_MAX_LIFETIME_S", 3600, { min: 1 }),
    },
    benchmark: {
      jsonPath: e.optional("BENCHMARK_JSON_PATH"),
      defaultJsonPath: join(root, "misc", "benchmark.json"),
      seedJsonPath: join(root, SEED_BENCHMARK),
      wrapperJsonPath: e.string(
        "BENCHMARK_WRAPPER_JSON_PATH",
        "/opt/comfyui-api-wrapper/workflows/pyworker_benchmark.json",
      ),
      promptsPath: join(root, "misc", "test_prompts.txt"),
      width: e.int("BENCHMARK_TEST_WIDTH", 512, { min: 8 }),
      height: e.int("BENCHMARK_TEST_HEIGHT", 512, { min: 8 }),
      steps: e.int("BENCHMARK_TEST_STEPS", 20, { min: 1 }),
      cacheFile: e.string("BENCHMARK_CACHE_FILE", join(root, ".has_benchmark")),
      maxRounds: e.int("BENCHMARK_MAX_ROUNDS", 8, { min: 1 }),
      minRounds: e.int("BENCHMARK_MIN_ROUNDS", 1, { min: 1 }),
      tolerance: e.number("BENCHMARK_TOLERANCE", 0.05, { min: 0, max: 1 }),
      skip: e.bool("BENCHMARK_SKIP", false),
      liveScore: e.bool("LIVE_SCORE", true),
      liveScoreBand: e.number("LIVE_SCORE_BAND", 2, { min: 1, max: 100 }),
      gpuKey: e.string("BENCHMARK_GPU_KEY", ""),
    },
    log: {
      level: e.oneOf("LOG_LEVEL", ["trace", "debug", "info", "warn", "error", "fatal", "silent"], "info"),
      pretty: e.bool("LOG_PRETTY", false),
      ...(e.optional("LOG_FILE") !== undefined && { file: resolve(e.optional("LOG_FILE")!) }),
    },
  };
  if (config.models.warm.length > 0 && config.models.dir === undefined) {
    throw new ConfigError(
      "MODELS",
      "needs ComfyUI's models folder: set COMFYUI_MODELS_DIR or COMFYUI_BASE_DIR",
    );
  }
  if (!config.autoscaler.unsecured && config.autoscaler.reportAddrs.length === 0) {
    throw new ConfigError("REPORT_ADDR", "required unless UNSECURED=true (the public key comes from there)");
  }
  return deepFreeze(config);
}

/** The config with secrets masked, for the start-up banner. */
export function describeConfig(config: FrozenConfig): unknown {
  const mask = (v: string | undefined) => (v ? `${v.slice(0, 2)}***` : undefined);
  return {
    ...config,
    s3: { ...config.s3, secretAccessKey: mask(config.s3.secretAccessKey) },
    webhook: {
      ...config.webhook,
      url: redactUrl(config.webhook.url),
      secret: mask(config.webhook.secret),
      signingKey: mask(config.webhook.signingKey),
    },
    autoscaler: { ...config.autoscaler, masterToken: mask(config.autoscaler.masterToken) },
    models: {
      ...config.models,
      hfToken: mask(config.models.hfToken),
      warm: config.models.warm.map((m) => `${m.folder}=${redactUrlKeepingPath(m.ref)}`),
    },
  };
}

/**
 * COMFYUI_URLS (several backends) or COMFYUI_URL (one), or the ComfyUIs the worker starts (`planned`), paired with
 * COMFYUI_OUTPUT_DIR's folders in order. Backends never share an output folder: ComfyUI numbers its files by what
 * the folder holds, so two servers writing into one would overwrite each other's outputs.
 */
function comfyBackends(
  e: EnvReader,
  argsPort: number | undefined,
  outputs: string[],
  planned?: string[],
): ComfyBackendConfig[] {
  const urls = planned ?? e.urlList("COMFYUI_URLS");
  if (planned === undefined && urls !== undefined && e.optional("COMFYUI_URL") !== undefined) {
    throw new ConfigError("COMFYUI_URLS", "set either COMFYUI_URL (one ComfyUI) or COMFYUI_URLS, not both");
  }
  const list = urls ?? [e.url("COMFYUI_URL", `http://127.0.0.1:${argsPort ?? DEFAULT_COMFYUI_PORT}`)!];
  if (list.length === 0) throw new ConfigError("COMFYUI_URLS", "lists no URL");
  if (list.length > 1 && outputs.length !== list.length) {
    throw new ConfigError(
      "COMFYUI_OUTPUT_DIR",
      `${list.length} backends in COMFYUI_URLS need ${list.length} output folders (comma-separated, one per ` +
        `backend, in order), got ${outputs.length}: backends sharing a folder overwrite each other's files`,
    );
  }
  if (list.length === 1 && outputs.length !== 1) {
    throw new ConfigError("COMFYUI_OUTPUT_DIR", `one ComfyUI needs one output folder, got ${outputs.length}`);
  }
  const dirs = outputs.map((d) => resolve(d));
  const twice = dirs.find((d, i) => dirs.indexOf(d) !== i);
  if (twice !== undefined) {
    throw new ConfigError(
      "COMFYUI_OUTPUT_DIR",
      `${twice} is listed twice: each backend needs its own folder`,
    );
  }
  return list.map((url, i) => ({ url, outputDir: dirs[i]! }));
}

/** The host of a config read without one: COMFYUI_LAUNCH=true cannot be planned then (the caller's mistake). */
const noHost: LaunchHost = (() => {
  const unknown = (): never => {
    throw new Error(
      "COMFYUI_LAUNCH=true: loadConfig needs a LaunchHost (worker/launcher/host.ts systemHost())",
    );
  };
  return {
    gpuCount: unknown,
    isExecutable: unknown,
    findProgram: unknown,
    readText: unknown,
    library: unknown,
  };
})();
