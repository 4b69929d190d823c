/**
 * Every failure the worker reports is one of these classes, with a stable `code`. `httpStatus` maps it to the
 * answer in one place (`toHttp`). Retryable errors are the ones another attempt (on this worker or another) may
 * fix: they are 5xx so that the Vast client re-routes; everything a caller can fix is 4xx, because the client
 * retries 5xx forever.
 */
export abstract class WorkerError extends Error {
  abstract readonly code: string;
  abstract readonly httpStatus: number;
  readonly retryable: boolean = false;
  readonly details: Record<string, unknown> | undefined;

  constructor(message: string, details?: Record<string, unknown>, options?: { cause?: unknown }) {
    super(message, options);
    this.details = details;
  }

  toJSON(): Record<string, unknown> {
    return { error: this.message, code: this.code, ...this.details };
  }
}

/** A malformed request: bad JSON, wrong field types, a request_id that could escape a folder. */
export class BadRequestError extends WorkerError {
  readonly code = "bad_request";
  readonly httpStatus = 400;
}

/** ComfyUI refused the workflow (validation). Carries ComfyUI's `error` and `node_errors`. */
export class InvalidWorkflowError extends WorkerError {
  readonly code = "invalid_workflow";
  readonly httpStatus = 400;
}

/** A URL or data: input could not be fetched or was refused. */
export class InputError extends WorkerError {
  readonly code = "input_error";
  readonly httpStatus = 400;
}

export class PayloadTooLargeError extends WorkerError {
  readonly code = "payload_too_large";
  readonly httpStatus = 413;
}

/** A body of a type the route does not read (the local API reads only `application/json`). */
export class UnsupportedMediaTypeError extends WorkerError {
  readonly code = "unsupported_media_type";
  readonly httpStatus = 415;
}

/** A request from a web page of another site (its Origin or Sec-Fetch-Site says so). */
export class CrossSiteRequestError extends WorkerError {
  readonly code = "cross_site_request";
  readonly httpStatus = 403;
}

/** A Host header this server does not answer for (a DNS-rebinding page names its own). */
export class MisdirectedRequestError extends WorkerError {
  readonly code = "misdirected_request";
  readonly httpStatus = 421;
}

export class UnauthorizedError extends WorkerError {
  readonly code = "unauthorized";
  readonly httpStatus = 401;
}

export class NotFoundError extends WorkerError {
  readonly code = "not_found";
  readonly httpStatus = 404;
}

/** The request_id is another worker's job (job documents in the bucket): the caller polls /result/{id}. */
export class ConflictError extends WorkerError {
  readonly code = "conflict";
  readonly httpStatus = 409;
}

/**
 * The request_id names a job made by another request (another workflow, storage or webhook): it answers only the
 * request that made it, so the caller picks a new id.
 */
export class RequestIdReusedError extends WorkerError {
  readonly code = "request_id_reused";
  readonly httpStatus = 409;
}

/** ComfyUI is down, restarting, or failed in a way another attempt may not (OOM, lost connection). */
export class ComfyUnavailableError extends WorkerError {
  readonly code = "comfyui_unavailable";
  readonly httpStatus = 503;
  override readonly retryable = true;
}

/** The worker is shutting down or not ready yet. */
export class NotReadyError extends WorkerError {
  readonly code = "not_ready";
  readonly httpStatus = 503;
  override readonly retryable = true;
}

/** An execution error inside ComfyUI (a node raised). Deterministic: reported as a failed job, not retried. */
export class ExecutionError extends WorkerError {
  readonly code = "execution_error";
  readonly httpStatus = 200;
}

/** The job ran past JOB_TIMEOUT_MS: 422 (not 408, which the Vast client retries forever). */
export class JobTimeoutError extends WorkerError {
  readonly code = "job_timeout";
  readonly httpStatus = 422;
}

/** ComfyUI ran out of memory: memory was freed, and another attempt (here or elsewhere) may succeed. */
export class OutOfMemoryError extends WorkerError {
  readonly code = "out_of_memory";
  readonly httpStatus = 503;
  override readonly retryable = true;
}

/** An unrecoverable device error (CUDA): this worker should take no more work until restarted. */
export class DeviceFailedError extends WorkerError {
  readonly code = "device_failed";
  readonly httpStatus = 503;
  override readonly retryable = true;
}

export class CancelledError extends WorkerError {
  readonly code = "cancelled";
  readonly httpStatus = 200;
}

/**
 * A failure the worker did not anticipate (a bug, not a fault of the world). Not retryable: another attempt runs
 * the same code, and the Vast client would retry a 5xx forever. Inside a job it is a terminal `failed` job.
 */
export class InternalError extends WorkerError {
  readonly code = "internal_error";
  readonly httpStatus = 500;
}

export function asWorkerError(err: unknown): WorkerError {
  if (err instanceof WorkerError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new InternalError(message, undefined, { cause: err });
}

/** The one place that turns an error into an HTTP answer. */
export function toHttp(err: unknown): { status: number; body: Record<string, unknown> | undefined } {
  const e = asWorkerError(err);
  return { status: e.httpStatus, body: e.toJSON() };
}
