import type { Logger } from "../../lib/logger.js";
import type { Job } from "./job.js";

/** What the job runner tells observers (metrics); an observer that throws is logged and ignored. */
export interface JobObserver {
  stage?(stage: "preprocess" | "queue" | "generation" | "postprocess", ms: number): void;
  finished?(job: Job): void;
  upload?(ok: boolean, bytes: number): void;
}

/** Calls an observer; its failure is logged, never the job's (metrics must not fail a generation). */
export function observeSafely(logger: Logger, fn: () => void): void {
  try {
    fn();
  } catch (err) {
    logger.error({ err }, "a job observer failed");
  }
}
