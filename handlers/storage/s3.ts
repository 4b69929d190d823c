import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { GetObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";
import { getSignedUrl } from "@aws-sdk/s3-request-presigner";
import type { S3Settings } from "../../config/index.js";
import { WorkerError } from "../../worker/errors.js";
import { contentTypeFor } from "./content-type.js";

/** A failed upload. Reported on its output (`upload_error`) and in the job's status, never as success. */
export class UploadError extends WorkerError {
  readonly code = "upload_failed";
  readonly httpStatus = 502;
  override readonly retryable = true;
}

export interface ResolvedS3 {
  accessKeyId: string;
  secretAccessKey: string;
  endpointUrl: string | undefined;
  bucketName: string;
  region: string;
}

/**
 * Merges a request's `s3` object over the environment's settings (empty strings mean "not given") and says whether
 * storage is configured at all: a bucket and credentials are needed.
 */
export function resolveS3(env: S3Settings, request: S3Settings | undefined): ResolvedS3 | undefined {
  const pick = (k: keyof S3Settings) => {
    const v = request?.[k];
    return typeof v === "string" && v.trim() !== "" ? v.trim() : env[k];
  };
  const accessKeyId = pick("accessKeyId");
  const secretAccessKey = pick("secretAccessKey");
  const bucketName = pick("bucketName");
  if (!accessKeyId || !secretAccessKey || !bucketName) return undefined;
  return {
    accessKeyId,
    secretAccessKey,
    bucketName,
    endpointUrl: pick("endpointUrl"),
    region: pick("region") ?? "us-east-1",
  };
}

export interface StorageOptions {
  forcePathStyle: boolean;
  partSizeBytes: number;
  presignExpirySeconds: number;
  /** Deadline for one object's upload. */
  uploadTimeoutMs: number;
}

export interface StoredObject {
  key: string;
  url: string;
  bytes: number;
}

/**
 * S3-compatible object storage. One client per distinct target (endpoint, bucket, credentials), reused.
 * Failure contract: `put` rejects with UploadError (never resolves on a failed upload).
 */
export class ObjectStorage {
  private readonly clients = new Map<string, S3Client>();
  constructor(private readonly opts: StorageOptions) {}

  private client(target: ResolvedS3): S3Client {
    const key = JSON.stringify([
      target.endpointUrl,
      target.region,
      target.accessKeyId,
      target.secretAccessKey,
    ]);
    let client = this.clients.get(key);
    if (!client) {
      client = new S3Client({
        region: target.region,
        ...(target.endpointUrl !== undefined && { endpoint: target.endpointUrl }),
        forcePathStyle: this.opts.forcePathStyle,
        credentials: { accessKeyId: target.accessKeyId, secretAccessKey: target.secretAccessKey },
        maxAttempts: 3,
        // Checksums added by recent SDKs are not understood by every S3-compatible server.
        requestChecksumCalculation: "WHEN_REQUIRED",
        responseChecksumValidation: "WHEN_REQUIRED",
      });
      this.clients.set(key, client);
    }
    return client;
  }

  /** Streams a file to `key` (multipart above one part), then returns a pre-signed GET URL for it. */
  async put(target: ResolvedS3, key: string, path: string, signal?: AbortSignal): Promise<StoredObject> {
    const client = this.client(target);
    const timeout = AbortSignal.timeout(this.opts.uploadTimeoutMs);
    const abortSignal = signal ? AbortSignal.any([signal, timeout]) : timeout;
    const abortController = new AbortController();
    const onAbort = () => abortController.abort(abortSignal.reason);
    abortSignal.addEventListener("abort", onAbort, { once: true });
    try {
      const { size } = await stat(path);
      const upload = new Upload({
        client,
        params: {
          Bucket: target.bucketName,
          Key: key,
          Body: createReadStream(path),
          ContentType: contentTypeFor(path),
          ContentLength: size,
        },
        partSize: this.opts.partSizeBytes,
        queueSize: 4,
        leavePartsOnError: false,
        abortController,
      });
      await upload.done();
      const url = await getSignedUrl(client, new GetObjectCommand({ Bucket: target.bucketName, Key: key }), {
        expiresIn: this.opts.presignExpirySeconds,
      });
      return { key, url, bytes: size };
    } catch (err) {
      const why = err instanceof Error ? err.message || err.name : String(err);
      throw new UploadError(`upload of ${key} to bucket ${target.bucketName} failed: ${why}`, undefined, {
        cause: err,
      });
    } finally {
      abortSignal.removeEventListener("abort", onAbort);
    }
  }

  close(): void {
    for (const c of this.clients.values()) c.destroy();
    this.clients.clear();
  }
}
