import type { Request, RequestHandler, Response } from "express";
import { NotFoundError } from "../../lib/errors.js";
import type { Logger } from "../../lib/logger.js";
import { RemoteJobs, isFinal, publicDocument } from "../jobs/endpoint-jobs.js";
import type { Job, JobEvent, ResultDocument } from "../jobs/job.js";
import type { JobManager } from "../jobs/manager.js";
import type { DownloadPrice } from "../load-signal.js";
import type { SharedDocument, SharedJobs } from "../jobs/shared.js";
import { parseGenerateInput, type ParsedInput } from "../schema.js";
import { sendError } from "./body.js";
import type { RouteHandlers } from "./route-table.js";

export interface GenerateRoutesDeps {
  jobs: JobManager;
  maxWorkflowNodes: number;
  /** Workload of a parsed request that admission did not count (the local API). */
  workloadOf: (input: ParsedInput) => number;
  /** The download part of its price where admission did not count it (the local API); none without. */
  downloadOf?: (input: ParsedInput) => Promise<DownloadPrice>;
  /** Job documents of the whole endpoint (S3); without it, only this worker's jobs are known. */
  shared?: SharedJobs;
  /** How long a caller waiting on another worker's job is kept waiting at most (the job deadline). */
  remoteWaitMs?: number;
  logger?: Logger;
}

/**
 * What the app mounting the routes hands them for a request: its `{input}` payload and, where admission counted
 * it, its workload.
 */
export interface Work {
  payload: unknown;
  workload?: number;
  /** The expected download time of its missing models, as admission priced it (LoadSignal.downloadPrice). */
  download?: DownloadPrice;
}

const works = new WeakMap<Request, Work>();

/** Called by the app that mounts the routes (the body itself, or the envelope's `payload`), before them. */
export function attachWork(req: Request, work: Work): void {
  works.set(req, work);
}

/** What `attachWork` handed over for `req` (other routes that take a payload read it too). */
export function workOf(req: Request): Work | undefined {
  return works.get(req);
}

/**
 * The HTTP status for a finished job: its error's status for client mistakes (4xx) and retryable failures (5xx),
 * else 200 with the failure in the document (a 5xx for a deterministic failure would be retried forever).
 */
export function statusFor(job: Job): number {
  return job.httpStatus();
}

function sendResult(res: Response, job: Job): void {
  res.status(statusFor(job)).json(job.result());
}

/** The job's end, once the bucket was given it (Job.published): what an answer that tells the end waits for. */
async function ended(job: Job): Promise<void> {
  await job.done;
  await job.published;
}

/** The generation routes: the same handlers on both ports (a job is the same job whichever port it came through). */
export type GenerateRouteKey =
  | "POST /generate/sync"
  | "POST /generate"
  | "POST /generate/stream"
  | "GET /result/:id"
  | "POST /result/:id"
  | "POST /cancel/:id";

/**
 * /generate/sync, /generate (async), /generate/stream, /result/{id}, /cancel/{id}. A caller that disconnects from
 * sync or stream cancels the job, unless someone else also waits on it or it was submitted asynchronously.
 * The app that mounts them hands each request's payload and workload over with `attachWork`.
 */
export function generateRoutes(deps: GenerateRoutesDeps): RouteHandlers<GenerateRouteKey> {
  const watchers = new WeakMap<Job, { count: number; detached: boolean }>();
  // Other workers' jobs (read from the bucket) answer a caller whose request or poll landed here.
  const remote =
    deps.shared &&
    new RemoteJobs({
      shared: deps.shared,
      local: (id) => deps.jobs.get(id),
      ...(deps.remoteWaitMs !== undefined && { waitMs: deps.remoteWaitMs }),
      ...(deps.logger && { logger: deps.logger }),
    });

  const notHere = (id: string) =>
    new NotFoundError(
      deps.shared
        ? `no job ${id} on this endpoint (unknown, or past its retention)`
        : `no job ${id} on this worker (unknown, or past its retention). Without S3 storage configured, a job is ` +
            "known only to the worker that ran it: send the request and its polls in one session (session_id) " +
            "to reach the same worker",
    );

  type Submitted = { job: Job; created: boolean; remote?: undefined } | { remote: SharedDocument };
  const submit = async (req: Request): Promise<Submitted> => {
    const work = works.get(req);
    const input = parseGenerateInput(work?.payload, { maxWorkflowNodes: deps.maxWorkflowNodes });
    const held = await remote?.holding(input, work?.payload);
    if (held) return { remote: held };
    const download = work?.download ?? (await deps.downloadOf?.(input));
    return deps.jobs.submit(input, work?.workload ?? deps.workloadOf(input), download);
  };

  const watch = (job: Job, res: Response) => {
    const w = watchers.get(job) ?? { count: 0, detached: false };
    watchers.set(job, w);
    w.count++;
    let left = false;
    const leave = () => {
      if (left) return;
      left = true;
      w.count--;
    };
    res.on("close", () => {
      const disconnected = !res.writableFinished;
      leave();
      if (disconnected && w.count === 0 && !w.detached && !job.final) {
        deps.jobs.cancel(job.id, "The caller disconnected");
      }
    });
    return leave;
  };

  /**
   * Submits and attaches this caller to the job; a job of another worker is followed in the bucket; undefined
   * (after answering the error) when refused.
   */
  const submitWatched = async (
    req: Request,
    res: Response,
  ): Promise<
    { job: Job; leave: () => void; remote?: undefined } | { remote: SharedDocument } | undefined
  > => {
    try {
      const submitted = await submit(req);
      if (submitted.remote) return submitted;
      return { job: submitted.job, leave: watch(submitted.job, res) };
    } catch (err) {
      sendError(res, err);
      return undefined;
    }
  };

  const sync: RequestHandler = async (req, res) => {
    const watched = await submitWatched(req, res);
    if (!watched) return;
    if (watched.remote) {
      const doc = await remote!.follow(watched.remote, () => res.destroyed);
      if (!res.destroyed) res.status(isFinal(doc) ? doc.http_status : 202).json(publicDocument(doc));
      return;
    }
    const { job, leave } = watched;
    await ended(job);
    leave();
    if (!res.destroyed) sendResult(res, job);
  };

  const submitAsync: RequestHandler = async (req, res) => {
    try {
      const submitted = await submit(req);
      if (submitted.remote) return void res.status(200).json(publicDocument(submitted.remote));
      const { job, created } = submitted;
      const w = watchers.get(job) ?? { count: 0, detached: true };
      w.detached = true;
      watchers.set(job, w);
      await job.recorded;
      // A job that ended while it was being recorded (or whose id another worker's job holds) answers its end.
      res.status(job.final ? statusFor(job) : created ? 202 : 200).json(job.result());
    } catch (err) {
      sendError(res, err);
    }
  };

  const stream: RequestHandler = async (req, res) => {
    const watched = await submitWatched(req, res);
    if (!watched) return;
    res.status(200).setHeader("content-type", "application/x-ndjson");
    res.setHeader("cache-control", "no-store");
    res.flushHeaders();
    const write = (obj: unknown) => {
      if (!res.destroyed) res.write(`${JSON.stringify(obj)}\n`);
    };
    if (watched.remote) {
      const first = watched.remote;
      write({ id: first.id, type: "status", status: first.status, message: first.message });
      const doc = await remote!.follow(first, () => res.destroyed);
      write({ type: "result", http_status: isFinal(doc) ? doc.http_status : 202, ...publicDocument(doc) });
      return void res.end();
    }
    const { job, leave } = watched;
    const onEvent = (event: JobEvent) => write({ id: job.id, ...event });
    write({ id: job.id, type: "status", status: job.status, message: job.message });
    job.on("event", onEvent);
    await ended(job);
    job.off("event", onEvent);
    leave();
    const doc: ResultDocument & { type: string; http_status: number } = {
      type: "result",
      http_status: statusFor(job),
      ...job.result(),
    };
    write(doc);
    res.end();
  };

  /** Another worker's job, from the bucket; undefined (after answering) when there is none or it failed. */
  const remoteJob = async (id: string, res: Response): Promise<SharedDocument | undefined> => {
    try {
      const doc = await remote?.read(id);
      if (!doc) sendError(res, notHere(id));
      return doc;
    } catch (err) {
      sendError(res, err);
      return undefined;
    }
  };

  const result: RequestHandler = async (req, res) => {
    const { id } = req.params as { id: string };
    const job = deps.jobs.get(id);
    // A retryable failure here may have been retried on another worker: a later run of the id in the bucket is
    // the job's state now, so that every worker answers the same.
    const later = job && (await remote?.laterRun(job));
    if (later) return void res.status(200).json(publicDocument(later));
    if (job) return void res.status(200).json(job.result());
    const doc = await remoteJob(id, res);
    if (doc) res.status(200).json(publicDocument(doc));
  };

  const cancel: RequestHandler = async (req, res) => {
    const { id } = req.params as { id: string };
    const job = deps.jobs.cancel(id);
    if (!job) {
      // Another worker's: leave it a cancel request (it looks every second) and answer the document as it stands.
      const doc = await remoteJob(id, res);
      if (!doc) return;
      try {
        await remote!.cancel(doc);
      } catch (err) {
        return sendError(res, err);
      }
      return void res.status(200).json(publicDocument(doc));
    }
    // A queued job settles at once; a running one once ComfyUI stopped it. Answer with its state either way.
    void ended(job).then(() => res.status(200).json(job.result()));
  };

  return {
    "POST /generate/sync": sync,
    "POST /generate": submitAsync,
    "POST /generate/stream": stream,
    "GET /result/:id": result,
    "POST /result/:id": result,
    "POST /cancel/:id": cancel,
  };
}
