import { Router, type Request, type Response } from "express";
import { NotFoundError, type WorkerError } from "../../lib/errors.js";
import type { Job, JobEvent, ResultDocument } from "../jobs/job.js";
import type { JobManager } from "../jobs/manager.js";
import { parseGenerateInput, type ParsedInput } from "../schema.js";
import { sendError } from "./body.js";

export interface GenerateRoutesDeps {
  jobs: JobManager;
  maxWorkflowNodes: number;
  /** Workload of a parsed request that admission did not count (the local API). */
  workloadOf: (input: ParsedInput) => number;
}

/**
 * The HTTP status for a finished job: its error's status for client mistakes (4xx) and retryable failures (5xx),
 * else 200 with the failure in the document (a 5xx for a deterministic failure would be retried forever).
 */
export function statusFor(job: Job): number {
  const err: WorkerError | undefined = job.error;
  if (!err) return 200;
  if (err.httpStatus >= 500) return err.retryable ? err.httpStatus : 200;
  return err.httpStatus >= 400 ? err.httpStatus : 200;
}

/** What the app mounting the routes hands them for a request: its `{input}` payload and, where admission counted
 * it, its workload. */
export interface Work {
  payload: unknown;
  workload?: number;
}

const works = new WeakMap<Request, Work>();

/** Called by the app that mounts the routes (the body itself, or the envelope's `payload`), before them. */
export function attachWork(req: Request, work: Work): void {
  works.set(req, work);
}

function sendResult(res: Response, job: Job): void {
  res.status(statusFor(job)).json(job.result());
}

/**
 * /generate/sync, /generate (async), /generate/stream, /result/{id}, /cancel/{id}. A caller that disconnects from
 * sync or stream cancels the job, unless someone else also waits on it or it was submitted asynchronously.
 * The app that mounts it hands each request's payload and workload over with `attachWork`.
 */
export function generateRoutes(deps: GenerateRoutesDeps): Router {
  const router = Router();
  const watchers = new WeakMap<Job, { count: number; detached: boolean }>();

  const submit = (req: Request) => {
    const work = works.get(req);
    const input = parseGenerateInput(work?.payload, { maxWorkflowNodes: deps.maxWorkflowNodes });
    return deps.jobs.submit(input, work?.workload ?? deps.workloadOf(input));
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

  /** Submits and attaches this caller to the job; undefined (after answering the error) when refused. */
  const submitWatched = (req: Request, res: Response): { job: Job; leave: () => void } | undefined => {
    try {
      const { job } = submit(req);
      return { job, leave: watch(job, res) };
    } catch (err) {
      sendError(res, err);
      return undefined;
    }
  };

  router.post("/generate/sync", async (req, res) => {
    const watched = submitWatched(req, res);
    if (!watched) return;
    const { job, leave } = watched;
    await job.done;
    leave();
    if (!res.destroyed) sendResult(res, job);
  });

  router.post("/generate", (req, res) => {
    try {
      const { job, created } = submit(req);
      const w = watchers.get(job) ?? { count: 0, detached: true };
      w.detached = true;
      watchers.set(job, w);
      res.status(created ? 202 : 200).json(job.result());
    } catch (err) {
      sendError(res, err);
    }
  });

  router.post("/generate/stream", async (req, res) => {
    const watched = submitWatched(req, res);
    if (!watched) return;
    const { job, leave } = watched;
    res.status(200).setHeader("content-type", "application/x-ndjson");
    res.setHeader("cache-control", "no-store");
    res.flushHeaders();
    const write = (obj: unknown) => {
      if (!res.destroyed) res.write(`${JSON.stringify(obj)}\n`);
    };
    const onEvent = (event: JobEvent) => write({ id: job.id, ...event });
    write({ id: job.id, type: "status", status: job.status, message: job.message });
    job.on("event", onEvent);
    await job.done;
    job.off("event", onEvent);
    leave();
    const doc: ResultDocument & { type: string; http_status: number } = {
      type: "result",
      http_status: statusFor(job),
      ...job.result(),
    };
    write(doc);
    res.end();
  });

  const result = (req: Request<{ id: string }>, res: Response) => {
    const job = deps.jobs.get(req.params.id);
    if (!job)
      return sendError(res, new NotFoundError(`no job ${req.params.id} (unknown, or past its retention)`));
    res.status(200).json(job.result());
  };
  router.get("/result/:id", result);
  router.post("/result/:id", result);

  router.post("/cancel/:id", (req, res) => {
    const job = deps.jobs.cancel(req.params.id);
    if (!job) return sendError(res, new NotFoundError(`no job ${req.params.id}`));
    // A queued job settles at once; a running one once ComfyUI stopped it. Answer with its state either way.
    void job.done.then(() => res.status(200).json(job.result()));
  });

  return router;
}
