import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  GetObjectCommand,
  HeadBucketCommand,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
} from "@aws-sdk/client-s3";
import { getSignedUrl } from "@aws-sdk/s3-request-presigner";
import type { S3Settings } from "../../config/index.js";
import { WorkerError } from "../../lib/errors.js";
import { contentTypeFor } from "./content-type.js";

/** A failed upload. Reported on its output (`upload_error`) and in the job's status, never as success. */
export class UploadError extends WorkerError {
  readonly code = "upload_failed";
  readonly httpStatus = 502;
  override readonly retryable = true;
}

/** Parts of one multipart upload in flight at once. */
const PARALLEL_PARTS = 3;

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

  /**
   * Streams a file to `key`, then returns a pre-signed GET URL for it. Above one part it is a multipart upload whose
   * parts are read straight from the file by range, a few at a time: memory stays flat whatever the file's size
   * (lib-storage's Upload buffers every part in memory, 4 x 8 MiB and more at once). A failed multipart upload is
   * aborted so that no orphan parts are billed.
   */
  async put(target: ResolvedS3, key: string, path: string, signal?: AbortSignal): Promise<StoredObject> {
    const client = this.client(target);
    const timeout = AbortSignal.timeout(this.opts.uploadTimeoutMs);
    const abortSignal = signal ? AbortSignal.any([signal, timeout]) : timeout;
    const common = { Bucket: target.bucketName, Key: key };
    try {
      const { size } = await stat(path);
      const contentType = contentTypeFor(path);
      if (size <= this.opts.partSizeBytes) {
        await client.send(
          new PutObjectCommand({
            ...common,
            Body: createReadStream(path),
            ContentLength: size,
            ContentType: contentType,
          }),
          { abortSignal },
        );
      } else {
        await this.multipart(client, common, path, size, contentType, abortSignal);
      }
      const url = await getSignedUrl(client, new GetObjectCommand(common), {
        expiresIn: this.opts.presignExpirySeconds,
      });
      return { key, url, bytes: size };
    } catch (err) {
      const why = err instanceof Error ? err.message || err.name : String(err);
      throw new UploadError(`upload of ${key} to bucket ${target.bucketName} failed: ${why}`, undefined, {
        cause: err,
      });
    }
  }

  private async multipart(
    client: S3Client,
    common: { Bucket: string; Key: string },
    path: string,
    size: number,
    contentType: string,
    abortSignal: AbortSignal,
  ): Promise<void> {
    const { UploadId } = await client.send(
      new CreateMultipartUploadCommand({ ...common, ContentType: contentType }),
      {
        abortSignal,
      },
    );
    if (!UploadId) throw new Error("the server gave no UploadId");
    const partSize = this.opts.partSizeBytes;
    const count = Math.ceil(size / partSize);
    const etags: string[] = new Array<string>(count);
    let next = 0;
    const uploadParts = async () => {
      while (next < count) {
        const index = next++;
        const start = index * partSize;
        const end = Math.min(size, start + partSize) - 1;
        const res = await client.send(
          new UploadPartCommand({
            ...common,
            UploadId,
            PartNumber: index + 1,
            Body: createReadStream(path, { start, end }),
            ContentLength: end - start + 1,
          }),
          { abortSignal },
        );
        if (!res.ETag) throw new Error(`part ${index + 1} got no ETag`);
        etags[index] = res.ETag;
      }
    };
    try {
      await Promise.all(Array.from({ length: Math.min(PARALLEL_PARTS, count) }, uploadParts));
      await client.send(
        new CompleteMultipartUploadCommand({
          ...common,
          UploadId,
          MultipartUpload: { Parts: etags.map((ETag, i) => ({ ETag, PartNumber: i + 1 })) },
        }),
        { abortSignal },
      );
    } catch (err) {
      await client
        .send(new AbortMultipartUploadCommand({ ...common, UploadId }), {
          abortSignal: AbortSignal.timeout(10_000),
        })
        .catch(() => undefined);
      throw err;
    }
  }

  /** Checks that the bucket exists and the credentials reach it (HeadBucket); rejects with the S3 error's name. */
  async probe(target: ResolvedS3, signal: AbortSignal = AbortSignal.timeout(10_000)): Promise<void> {
    try {
      await this.client(target).send(new HeadBucketCommand({ Bucket: target.bucketName }), {
        abortSignal: signal,
      });
    } catch (err) {
      const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
      throw new Error(
        `bucket ${target.bucketName}: ${e.name ?? "error"} ${e.$metadata?.httpStatusCode ?? ""}`.trim(),
        {
          cause: err,
        },
      );
    }
  }

  close(): void {
    for (const c of this.clients.values()) c.destroy();
    this.clients.clear();
  }
}
