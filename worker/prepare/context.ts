import type { Writable } from "node:stream";
import type { Got } from "got";
import { pino, type DestinationStream } from "pino";
import { redactText } from "../../lib/redact.js";

/** The steps of prepare, as its log lines name them. */
export type PrepareStage =
  | "prepare"
  | "install"
  | "build"
  | "certificate"
  | "provisioning"
  | "comfyui"
  | "api"
  | "benchmark"
  | "report";

/** prepare's log: JSON lines on stderr (stdout carries its answer), each message's URLs redacted. */
export interface PrepareLog {
  info(stage: PrepareStage, message: string, fields?: Record<string, number | string | boolean>): void;
  warn(stage: PrepareStage, message: string, fields?: Record<string, number | string | boolean>): void;
  error(stage: PrepareStage, message: string, fields?: Record<string, number | string | boolean>): void;
}

/** What every step of prepare is handed. */
export interface PrepareContext {
  /** The environment prepare runs in, which the provisioning script and git get whole (npm only its own part). */
  env: Readonly<Record<string, string | undefined>>;
  log: PrepareLog;
  /** Where a child program's output goes, line by line and redacted: never stdout. */
  childOutput: Writable;
  /** Outbound HTTP (the console's signing, a provisioning script's download, the failure report). */
  http: Got;
}

export function createPrepareLog(destination: DestinationStream): PrepareLog {
  const logger = pino({ name: "comfyui-worker", level: "info", base: undefined }, destination);
  const at =
    (level: "info" | "warn" | "error") =>
    (stage: PrepareStage, message: string, fields: Record<string, number | string | boolean> = {}) => {
      const shown = Object.fromEntries(
        Object.entries(fields).map(([k, v]) => [k, typeof v === "string" ? redactText(v) : v]),
      );
      logger[level]({ stage: `prepare:${stage}`, ...shown }, redactText(message));
    };
  return { info: at("info"), warn: at("warn"), error: at("error") };
}

/** A failure that stops prepare; `code` says which step, the message what to do about it. */
export class PrepareError extends Error {
  override readonly name = "PrepareError";
  constructor(
    readonly code:
      | "config"
      | "install_failed"
      | "no_worker"
      | "build_failed"
      | "certificate_unavailable"
      | "comfyui_not_found"
      | "no_api_port",
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Seconds since `started` (Date.now()), for log lines. */
export function since(started: number): number {
  return Math.round((Date.now() - started) / 100) / 10;
}
