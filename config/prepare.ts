import { DEFAULT_LOG_DIR, DEFAULT_WORKSPACE } from "./comfyui-args.js";
import { join } from "node:path";
import { parseComfyArgs } from "./comfyui-args.js";
import { ConfigError, EnvReader, type Env } from "./env.js";
import { advertisedAddress, apiAddress, deepFreeze, reportTarget, sslFiles } from "./index.js";

/**
 * What `worker.mjs prepare` reads: the steps before the worker starts (our image's install, certificate and
 * provisioning; the stock template's build, ComfyUI, API port and stop window). A config of its own, so that a
 * worker setting prepare does not use (S3, webhooks ...) never stops it: the worker reports those itself.
 */
export type PrepareTarget = "image" | "stock-template";

/** How a start-up failure reaches the autoscaler: parsed first, so that any later failure can be reported. */
export interface PrepareReport {
  addrs: readonly string[];
  identity: { containerId: number; masterToken: string; url: string };
}

export interface PrepareSsl {
  /** USE_SSL: the routed port serves HTTPS with this pair. */
  use: boolean;
  cert: string;
  key: string;
}

export interface ImagePrepare {
  target: "image";
  ssl: PrepareSsl;
  /** The installed worker (replaced by a PYWORKER_REPO install). */
  workerDir: string;
  workspace: string;
  /** Where the install markers are kept (one per repository and ref). */
  installMarkerDir: string;
  /** PYWORKER_REPO (a git URL or path) and PYWORKER_REF ("" for the default branch). */
  repo: { url: string; ref: string } | undefined;
  certificate: {
    /** Vast's console endpoint that signs a certificate request for the instance. */
    signUrl: string;
    attempts: number;
    /** The wait after the first failed attempt; it doubles after each further one. */
    retryDelayMs: number;
    /** CONTAINER_ID as given: without it nothing is asked of the console. */
    containerId: string | undefined;
  };
  provisioning: {
    /** Under supervisor, Vast's boot runs PROVISIONING_SCRIPT and flags the run with `flag`. */
    underSupervisor: boolean;
    script: string | undefined;
    marker: string;
    flag: string;
    /** How long the script may run, or the wait for Vast's provisioning may last. */
    timeoutMs: number;
  };
  /** The worker's settings prepare fills in when they are unset (their value when set). */
  worker: {
    comfyuiLaunch: string | undefined;
    logFile: string | undefined;
    logDir: string;
    benchmarkCacheFile: string | undefined;
    benchmarkJsonPath: string | undefined;
  };
}

export interface StockTemplatePrepare {
  target: "stock-template";
  ssl: PrepareSsl;
  comfyui: {
    /** Set by the operator in any of the ways the worker reads: then prepare leaves the folders alone. */
    foldersGiven: boolean;
    /** Where the stock image's ComfyUI is looked for, in order. */
    candidates: readonly string[];
  };
  api: { host: string; port: number; enabled: boolean };
  /** How long the stock API wrapper's workflow conversion is waited for. */
  conversionWaitMs: number;
  /** STOP_WAIT_S and LOG_FILE as set (prepare fills in the stock program's when unset). */
  stopWaitS: string | undefined;
  logFile: string | undefined;
  /** start_server.sh's folder, where its pyworker.log is (the worker's log file goes beside it). */
  logDir: string;
}

export type PrepareConfig = ImagePrepare | StockTemplatePrepare;

/**
 * The stock image's convert-workflows.sh waits this long for ComfyUI (its COMFYUI_READY_TIMEOUT) before it converts;
 * the margin covers the conversion and the wrapper's own start.
 */
const CONVERSION_MARGIN_MS = 60_000;

/** REPORT_ADDR and the worker's identity, as the worker's own reports name it. */
export function loadPrepareReport(env: Env): PrepareReport {
  const e = new EnvReader(env);
  const target = reportTarget(e);
  return Object.freeze({
    addrs: Object.freeze(target.reportAddrs),
    identity: Object.freeze({
      containerId: target.containerId,
      masterToken: target.masterToken,
      url: advertisedAddress(e).publicUrl,
    }),
  });
}

/** The settings of one target, frozen. Throws ConfigError naming the variable. */
export function loadPrepareConfig(env: Env, target: PrepareTarget): PrepareConfig {
  const e = new EnvReader(env);
  const { sslCert, sslKey } = sslFiles(e);
  const ssl = { use: advertisedAddress(e).useSsl, cert: sslCert, key: sslKey };
  const config = target === "image" ? imageConfig(e, ssl) : stockTemplateConfig(e, ssl);
  return deepFreeze(config);
}

function imageConfig(e: EnvReader, ssl: PrepareSsl): ImagePrepare {
  const workerDir = e.string("WORKER_DIR", "/opt/worker");
  const workspace = e.string("WORKSPACE", DEFAULT_WORKSPACE);
  const repo = e.optional("PYWORKER_REPO");
  const signUrl = e.string("VAST_SIGN_CERT_URL", "https://console.vast.ai/api/v0/sign_cert/");
  // As given, trailing slash and all: the instance id is appended to it (`?instance_id=`).
  if (!/^https?:\/\/[^/]/i.test(signUrl)) {
    throw new ConfigError("VAST_SIGN_CERT_URL", "expected an http(s) URL");
  }
  return {
    target: "image",
    ssl,
    workerDir,
    workspace,
    installMarkerDir: e.string("INSTALL_MARKER_DIR", workerDir),
    repo: repo === undefined ? undefined : { url: repo, ref: e.string("PYWORKER_REF", "") },
    certificate: {
      signUrl,
      attempts: e.int("CERT_SIGN_ATTEMPTS", 5, { min: 1, max: 100 }),
      retryDelayMs: e.int("CERT_RETRY_DELAY", 2, { min: 0, max: 3600 }) * 1000,
      containerId: e.optional("CONTAINER_ID"),
    },
    provisioning: {
      underSupervisor: e.bool("WORKER_UNDER_SUPERVISOR", false),
      script: e.optional("PROVISIONING_SCRIPT"),
      marker: e.string("PROVISIONING_MARKER", "/.provisioning_complete"),
      flag: e.string("PROVISIONING_FLAG", "/.provisioning"),
      timeoutMs: e.int("PROVISIONING_TIMEOUT_S", 7200, { min: 1 }) * 1000,
    },
    worker: {
      comfyuiLaunch: e.optional("COMFYUI_LAUNCH"),
      logFile: e.optional("LOG_FILE"),
      logDir: e.string("LOG_DIR", DEFAULT_LOG_DIR),
      benchmarkCacheFile: e.optional("BENCHMARK_CACHE_FILE"),
      benchmarkJsonPath: e.optional("BENCHMARK_JSON_PATH"),
    },
  };
}

function stockTemplateConfig(e: EnvReader, ssl: PrepareSsl): StockTemplatePrepare {
  // The image sets WORKSPACE; start_server.sh's own folder is WORKSPACE_DIR (the same folder unless set apart).
  const workspace = e.optional("WORKSPACE") ?? e.optional("WORKSPACE_DIR") ?? DEFAULT_WORKSPACE;
  const serverDir = e.optional("WORKSPACE_DIR") ?? e.optional("WORKSPACE") ?? DEFAULT_WORKSPACE;
  const foldersGiven =
    e.optional("COMFYUI_BASE_DIR") !== undefined ||
    (e.optional("COMFYUI_INPUT_DIR") !== undefined && e.optional("COMFYUI_OUTPUT_DIR") !== undefined) ||
    parseComfyArgs(e.optional("COMFYUI_ARGS")).baseDir !== undefined;
  return {
    target: "stock-template",
    ssl,
    comfyui: {
      foldersGiven,
      candidates: [
        ...new Set([join(workspace, "ComfyUI"), "/workspace/ComfyUI", "/opt/workspace-internal/ComfyUI"]),
      ],
    },
    api: apiAddress(e),
    conversionWaitMs: e.int("COMFYUI_READY_TIMEOUT", 300, { min: 0 }) * 1000 + CONVERSION_MARGIN_MS,
    stopWaitS: e.optional("STOP_WAIT_S"),
    logFile: e.optional("LOG_FILE"),
    logDir: serverDir,
  };
}
