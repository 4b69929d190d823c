import type { Emitter } from "../lib/events.js";
import type { Job } from "./jobs/job.js";

/** A job's stages, timed one after the other (each one's milliseconds are in `job.timings`). */
export type JobStage = "preprocess" | "queue" | "generation" | "postprocess";

/**
 * What happens to the worker's jobs, for whoever observes them (metrics, the load signal, the operator page's
 * feed, tests and benchmarks). Listeners only observe: what they throw is logged, never the job's (lib/events.ts).
 * What a part asks of another (a backend's score) is a function it is given, not an event.
 */
export interface WorkerEvents {
  /** A job was accepted and starts (a request answered by an existing job is not a new one). */
  "job.created": Job;
  /** A stage of a job ended after `ms`. */
  "job.stage": { job: Job; stage: JobStage; ms: number };
  /** One of a job's files was uploaded (`bytes`), or its upload failed (0). */
  "job.upload": { job: Job; ok: boolean; bytes: number };
  /** A job reached its final status; its timings are complete, its webhook not yet sent. */
  "job.finished": Job;
}

export type WorkerEventEmitter = Emitter<WorkerEvents>;
