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
  static readonly meaning =
    "The request is malformed: bad JSON, a wrong field type, a request_id that could escape a folder, a refused caller-chosen URL.";
  readonly code = "bad_request";
  readonly httpStatus = 400;
}

/** ComfyUI refused the workflow (validation). Carries ComfyUI's `error` and `node_errors`. */
export class InvalidWorkflowError extends WorkerError {
  static readonly meaning =
    "ComfyUI refused the workflow (validation, an unknown node type); carries ComfyUI's error and node_errors.";
  readonly code = "invalid_workflow";
  readonly httpStatus = 400;
}

/** A URL or data: input could not be fetched or was refused. */
export class InputError extends WorkerError {
  static readonly meaning =
    "A URL, data: or file input could not be fetched or was refused; names the node and input.";
  readonly code = "input_error";
  readonly httpStatus = 400;
}

export class PayloadTooLargeError extends WorkerError {
  static readonly meaning =
    "A size limit was passed (body bytes, JSON values, an input's bytes, MAX_INPUT_URLS); the message names the limit.";
  readonly code = "payload_too_large";
  readonly httpStatus = 413;
}

/** A model reference (https://, s3://, hf://) that is malformed or names an address the policy refuses. */
export class ModelReferenceError extends WorkerError {
  static readonly meaning =
    "A model reference (https://, s3://, hf://) is malformed, names no model file, or names an address the policy refuses.";
  readonly code = "model_bad_reference";
  readonly httpStatus = 400;
}

/** A model reference in an input that does not choose a file of a models folder (LoadImage's image, a text). */
export class NotModelInputError extends WorkerError {
  static readonly meaning =
    "A model reference was given in an input that does not choose a file of a models folder.";
  readonly code = "not_a_model_input";
  readonly httpStatus = 400;
}

/** The source of a model could not be read (no answer, DNS, 404, 5xx): not retried, the caller fixes the reference. */
export class ModelUnreachableError extends WorkerError {
  static readonly meaning =
    "The source of a model reference could not be read (connection, DNS, 404, 5xx); not retried.";
  readonly code = "model_unreachable";
  readonly httpStatus = 424;
}

/** The source of a model answered 401 or 403: the reference needs (other) credentials. */
export class ModelAccessDeniedError extends WorkerError {
  static readonly meaning =
    "The source of a model answered 401 or 403 (HF_TOKEN, the bucket's keys or a signed URL are needed).";
  readonly code = "model_access_denied";
  readonly httpStatus = 424;
}

/** A model is larger than MODEL_MAX_BYTES, or cannot fit in MODEL_CACHE_MAX_BYTES beside the models in use. */
export class ModelTooLargeError extends WorkerError {
  static readonly meaning =
    "A model is above MODEL_MAX_BYTES, or does not fit in MODEL_CACHE_MAX_BYTES beside the models jobs use.";
  readonly code = "model_too_large";
  readonly httpStatus = 413;
}

/** The downloaded model's sha256 is not the one the reference gave (`#sha256=`): the file was discarded. */
export class ModelChecksumError extends WorkerError {
  static readonly meaning =
    "The downloaded model's sha256 differs from the reference's #sha256=; the file was discarded.";
  readonly code = "model_bad_checksum";
  readonly httpStatus = 422;
}

/** A body of a type the route does not read (the local API reads only `application/json`). */
export class UnsupportedMediaTypeError extends WorkerError {
  static readonly meaning = "The body is not sent as content-type: application/json (local API).";
  readonly code = "unsupported_media_type";
  readonly httpStatus = 415;
}

/** A request from a web page of another site (its Origin or Sec-Fetch-Site says so). */
export class CrossSiteRequestError extends WorkerError {
  static readonly meaning =
    "A web page of another site sent the request (its Origin or Sec-Fetch-Site says so).";
  readonly code = "cross_site_request";
  readonly httpStatus = 403;
}

/** A Host header this server does not answer for (a DNS-rebinding page names its own). */
export class MisdirectedRequestError extends WorkerError {
  static readonly meaning =
    "The Host header is not one this server answers for (loopback names and API_ALLOWED_HOSTS).";
  readonly code = "misdirected_request";
  readonly httpStatus = 421;
}

export class UnauthorizedError extends WorkerError {
  static readonly meaning = "Missing or wrong credentials.";
  readonly code = "unauthorized";
  readonly httpStatus = 401;
}

export class NotFoundError extends WorkerError {
  static readonly meaning = "No such job on this worker or endpoint (unknown, or past its retention).";
  readonly code = "not_found";
  readonly httpStatus = 404;
}

/** A path the local API does not serve (the routed port answers upstream's bare 404 instead). */
export class RouteNotFoundError extends WorkerError {
  static readonly meaning = "No such route on the local API port (the routed port answers a bare 404).";
  readonly code = "route_not_found";
  readonly httpStatus = 404;
}

/** A route of the local API asked with a method it does not serve; `Allow` lists those it does. */
export class MethodNotAllowedError extends WorkerError {
  static readonly meaning =
    "The local API serves this path, but not with this method; the Allow header lists the methods it does.";
  readonly code = "method_not_allowed";
  readonly httpStatus = 405;
}

/** The request_id is another worker's job (job documents in the bucket): the caller polls /result/{id}. */
export class ConflictError extends WorkerError {
  static readonly meaning = "The request_id is another worker's job: poll /result/{id}.";
  readonly code = "conflict";
  readonly httpStatus = 409;
}

/**
 * The request_id names a job made by another request (another workflow, storage or webhook): it answers only the
 * request that made it, so the caller picks a new id.
 */
export class RequestIdReusedError extends WorkerError {
  static readonly meaning =
    "The request_id names a job made by another request (another workflow, storage or webhook): pick a new id.";
  readonly code = "request_id_reused";
  readonly httpStatus = 409;
}

/** ComfyUI is down, restarting, or failed in a way another attempt may not (OOM, lost connection). */
export class ComfyUnavailableError extends WorkerError {
  static readonly meaning =
    "ComfyUI is down, restarting or lost the connection: another attempt may succeed.";
  readonly code = "comfyui_unavailable";
  readonly httpStatus = 503;
  override readonly retryable = true;
}

/** The worker is shutting down or not ready yet. */
export class NotReadyError extends WorkerError {
  static readonly meaning = "The worker is starting or shutting down.";
  readonly code = "not_ready";
  readonly httpStatus = 503;
  override readonly retryable = true;
}

/** An execution error inside ComfyUI (a node raised). Deterministic: reported as a failed job, not retried. */
export class ExecutionError extends WorkerError {
  static readonly meaning = "A node raised inside ComfyUI: a failed job (200), not retried.";
  readonly code = "execution_error";
  readonly httpStatus = 200;
}

/** The job ran past JOB_TIMEOUT_MS: 422 (not 408, which the Vast client retries forever). */
export class JobTimeoutError extends WorkerError {
  static readonly meaning =
    "The job ran past JOB_TIMEOUT_MS (422, not 408, which the Vast client retries forever).";
  readonly code = "job_timeout";
  readonly httpStatus = 422;
}

/** ComfyUI ran out of memory: memory was freed, and another attempt (here or elsewhere) may succeed. */
export class OutOfMemoryError extends WorkerError {
  static readonly meaning = "ComfyUI ran out of memory; memory was freed, another attempt may succeed.";
  readonly code = "out_of_memory";
  readonly httpStatus = 503;
  override readonly retryable = true;
}

/**
 * A running prompt went quiet (no execution event, no progress) for longer than its stall timeout: it was
 * interrupted and its backend probed. Another attempt may succeed (elsewhere, or here once the probe passed).
 */
export class StalledError extends WorkerError {
  static readonly meaning =
    "The prompt stopped making progress (no event for longer than its stall timeout): interrupted, its backend probed; retry.";
  readonly code = "stalled";
  readonly httpStatus = 503;
  override readonly retryable = true;
}

/** An unrecoverable device error (CUDA): this worker should take no more work until restarted. */
export class DeviceFailedError extends WorkerError {
  static readonly meaning = "The backend's device failed its health probe and left the rotation.";
  readonly code = "device_failed";
  readonly httpStatus = 503;
  override readonly retryable = true;
}

export class CancelledError extends WorkerError {
  static readonly meaning =
    "The job was cancelled (by its caller, a disconnect, or the shutdown): a final state (200).";
  readonly code = "cancelled";
  readonly httpStatus = 200;
}

/** A failed upload: reported on its output (`upload_error`) and in the job's status, never as success. */
export class UploadError extends WorkerError {
  static readonly meaning =
    "An output could not be uploaded: the job fails, its output names the upload_error.";
  readonly code = "upload_failed";
  readonly httpStatus = 502;
  override readonly retryable = true;
}

/**
 * The storage answered an upload with a refusal (4xx: access denied, no such bucket, bad keys): the same upload
 * would be refused again, so it is not retried; a client mistake when the request chose the storage or its keys.
 */
export class UploadRejectedError extends WorkerError {
  static readonly meaning =
    "The storage refused an output's upload (access denied, no such bucket, bad keys): the job fails, not retried.";
  readonly code = "upload_rejected";
  readonly httpStatus = 424;
}

/** The storage could not be read or written (unreachable, refused): another attempt may succeed. */
export class StorageUnavailableError extends WorkerError {
  static readonly meaning =
    "S3 could not be read or written (unreachable, refused): another attempt may succeed.";
  readonly code = "storage_unavailable";
  readonly httpStatus = 503;
  override readonly retryable = true;
}

/** Another worker of the endpoint held the job and stopped answering (no heartbeat in the bucket). */
export class OwnerLostError extends WorkerError {
  static readonly meaning =
    "The worker running this job stopped answering (no heartbeat in the bucket): retry it.";
  readonly code = "owner_lost";
  readonly httpStatus = 503;
  override readonly retryable = true;
}

/**
 * A failure the worker did not anticipate (a bug, not a fault of the world). Not retryable: another attempt runs
 * the same code, and the Vast client would retry a 5xx forever. Inside a job it is a terminal `failed` job.
 */
export class InternalError extends WorkerError {
  static readonly meaning =
    "A failure the worker did not anticipate (a bug): a terminal failed job, not retried.";
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

/**
 * Every error the worker answers with: the error catalogue. /docs (OpenAPI) and docs/api.md list it with each HTTP
 * status and whether a retry may succeed, and a test holds all three to the classes above.
 */
export const ERROR_CLASSES = [
  BadRequestError,
  InvalidWorkflowError,
  InputError,
  PayloadTooLargeError,
  ModelReferenceError,
  NotModelInputError,
  ModelUnreachableError,
  ModelAccessDeniedError,
  ModelTooLargeError,
  ModelChecksumError,
  UnsupportedMediaTypeError,
  CrossSiteRequestError,
  MisdirectedRequestError,
  UnauthorizedError,
  NotFoundError,
  RouteNotFoundError,
  MethodNotAllowedError,
  ConflictError,
  RequestIdReusedError,
  ComfyUnavailableError,
  NotReadyError,
  ExecutionError,
  JobTimeoutError,
  OutOfMemoryError,
  StalledError,
  DeviceFailedError,
  CancelledError,
  UploadError,
  UploadRejectedError,
  StorageUnavailableError,
  OwnerLostError,
  InternalError,
] as const;

export interface ErrorCatalogueEntry {
  code: string;
  httpStatus: number;
  retryable: boolean;
  meaning: string;
}

export function errorCatalogue(): ErrorCatalogueEntry[] {
  return ERROR_CLASSES.map((Class) => {
    const e = new Class("");
    return { code: e.code, httpStatus: e.httpStatus, retryable: e.retryable, meaning: Class.meaning };
  });
}
