import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { Agent as HttpAgent } from "node:http";
import { Agent as HttpsAgent } from "node:https";
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
} from "@aws-sdk/client-s3";
import { getSignedUrl } from "@aws-sdk/s3-request-presigner";
import type { S3Settings } from "../../config/index.js";
import {
  BadRequestError,
  StorageUnavailableError,
  UploadError,
  UploadRejectedError,
} from "../../lib/errors.js";
import { CallbackAddressError, checkCallbackUrl, policyLookup } from "../preprocess/address-policy.js";
import { contentTypeFor } from "./content-type.js";

/** Parts of one multipart upload in flight at once. */
const PARALLEL_PARTS = 3;

export interface ResolvedS3 {
  accessKeyId: string;
  secretAccessKey: string;
  endpointUrl: string | undefined;
  bucketName: string;
  region: string;
  /** The endpoint came from the request: the address policy applies to it (submission and connect time). */
  callerEndpoint?: boolean;
}

/** A request's `s3` object as the schema gives it (snake case, each field optional). */
export interface S3Request {
  access_key_id?: string | undefined;
  secret_access_key?: string | undefined;
  endpoint_url?: string | undefined;
  bucket_name?: string | undefined;
  region?: string | undefined;
}

export function s3FromRequest(s3: S3Request | undefined): S3Settings | undefined {
  if (!s3) return undefined;
  return {
    accessKeyId: s3.access_key_id,
    secretAccessKey: s3.secret_access_key,
    endpointUrl: s3.endpoint_url,
    bucketName: s3.bucket_name,
    region: s3.region,
  };
}

/**
 * Merges a request's `s3` object over the environment's settings (empty strings mean "not given") and says whether
 * storage is configured at all: a bucket and credentials are needed.
 *
 * The operator's credentials are only ever used with the operator's own endpoint, bucket and region: a request that
 * points elsewhere (or brings one key but not the other) must bring both of its own keys, else BadRequestError
 * naming the missing field. Otherwise anyone could have the operator's key sign requests to a server they run.
 */
export function resolveS3(
  env: S3Settings,
  request: S3Settings | undefined,
  policy?: { allowPrivate: boolean },
): ResolvedS3 | undefined {
  const given = (k: keyof S3Settings) => {
    const v = request?.[k];
    return typeof v === "string" && v.trim() !== "" ? v.trim() : undefined;
  };
  const pick = (k: keyof S3Settings) => given(k) ?? env[k];
  const retargets = (["endpointUrl", "bucketName", "region"] as const).filter((k) => {
    const v = given(k);
    return v !== undefined && v !== env[k];
  });
  const ownKeys = given("accessKeyId") !== undefined || given("secretAccessKey") !== undefined;
  if (retargets.length > 0 || ownKeys) {
    const why = retargets.length > 0 ? `s3.${snake(retargets[0]!)} is set` : "one key is given";
    if (given("accessKeyId") === undefined) {
      throw new BadRequestError(
        `s3.access_key_id is required when ${why} (the worker's own keys stay with its bucket)`,
      );
    }
    if (given("secretAccessKey") === undefined) {
      throw new BadRequestError(
        `s3.secret_access_key is required when ${why} (the worker's own keys stay with its bucket)`,
      );
    }
  }
  const callerEndpoint = retargets.includes("endpointUrl");
  // A caller-chosen endpoint is an outbound URL like a webhook: no private or metadata address unless allowed.
  if (callerEndpoint && policy)
    checkCallbackUrl(given("endpointUrl")!, policy.allowPrivate, "s3.endpoint_url");
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
    callerEndpoint,
  };
}

/**
 * An object key built from request data must not climb or hide: every '/'-separated segment non-empty, not '.' or
 * '..', only printable characters, at most 1024 bytes (S3's limit).
 */
export function isSafeKey(key: string): boolean {
  if (Buffer.byteLength(key) > 1024 || key.includes("\\")) return false;
  if ([...key].some((c) => c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f)) return false;
  return key.split("/").every((seg) => seg !== "" && seg !== "." && seg !== "..");
}

function statusOf(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } } | null)?.$metadata?.httpStatusCode;
}

function describe(err: unknown): string {
  const e = err as { name?: string; message?: string };
  return `${e.name ?? "error"} ${statusOf(err) ?? ""} ${e.message ?? ""}`.replace(/\s+/g, " ").trim();
}

function snake(k: keyof S3Settings): string {
  return k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

export interface StorageOptions {
  forcePathStyle: boolean;
  partSizeBytes: number;
  presignExpirySeconds: number;
  /** Deadline for one object's upload. */
  uploadTimeoutMs: number;
  /** Clients kept (one per distinct target and credentials), least recently used dropped first. */
  maxClients?: number;
  /** WEBHOOK_ALLOW_PRIVATE: a caller-chosen endpoint may resolve to a private address. */
  allowPrivateEndpoints?: boolean;
}

export interface StoredObject {
  key: string;
  url: string;
  bytes: number;
}

/**
 * S3-compatible object storage. One client per distinct target (endpoint, bucket, credentials), reused, in a bounded
 * LRU: callers bringing their own keys cannot grow it without limit. A client in use is never dropped.
 * Failure contract: `put` rejects with UploadRejectedError (the storage refused it: 4xx) or UploadError (anything
 * else: retryable); it never resolves on a failed upload.
 */
export class ObjectStorage {
  private readonly clients = new Map<string, { client: S3Client; inUse: number }>();
  constructor(private readonly opts: StorageOptions) {}

  /** Runs `fn` with the target's client, held so that eviction leaves it alone meanwhile. */
  private async using<T>(target: ResolvedS3, fn: (client: S3Client) => Promise<T>): Promise<T> {
    const entry = this.entry(target);
    entry.inUse++;
    try {
      return await fn(entry.client);
    } finally {
      entry.inUse--;
      this.evict();
    }
  }

  private evict(): void {
    const max = this.opts.maxClients ?? 32;
    for (const [key, e] of this.clients) {
      if (this.clients.size <= max) break;
      if (e.inUse > 0) continue;
      this.clients.delete(key);
      e.client.destroy();
    }
  }

  /** How many clients are kept (for tests of the bound). */
  get clientCount(): number {
    return this.clients.size;
  }

  private entry(target: ResolvedS3): { client: S3Client; inUse: number } {
    const guarded = target.callerEndpoint === true && this.opts.allowPrivateEndpoints !== true;
    const key = JSON.stringify([
      guarded,
      target.endpointUrl,
      target.region,
      target.accessKeyId,
      target.secretAccessKey,
    ]);
    const found = this.clients.get(key);
    if (found) {
      // Most recently used last: Map iteration order is the eviction order.
      this.clients.delete(key);
      this.clients.set(key, found);
      return found;
    }
    {
      const client = new S3Client({
        region: target.region,
        ...(target.endpointUrl !== undefined && { endpoint: target.endpointUrl }),
        forcePathStyle: this.opts.forcePathStyle,
        credentials: { accessKeyId: target.accessKeyId, secretAccessKey: target.secretAccessKey },
        // The address actually connected to is checked (a public name may resolve to a private address).
        ...(guarded && {
          requestHandler: {
            httpAgent: new HttpAgent({ lookup: policyLookup }),
            httpsAgent: new HttpsAgent({ lookup: policyLookup }),
          },
        }),
        maxAttempts: 3,
        // Checksums added by recent SDKs are not understood by every S3-compatible server.
        requestChecksumCalculation: "WHEN_REQUIRED",
        responseChecksumValidation: "WHEN_REQUIRED",
      });
      const created = { client, inUse: 0 };
      this.clients.set(key, created);
      return created;
    }
  }

  /**
   * Streams a file to `key`, then returns a pre-signed GET URL for it. Above one part it is a multipart upload whose
   * parts are read straight from the file by range, a few at a time: memory stays flat whatever the file's size
   * (lib-storage's Upload buffers every part in memory, 4 x 8 MiB and more at once). A failed multipart upload is
   * aborted so that no orphan parts are billed.
   */
  put(target: ResolvedS3, key: string, path: string, signal?: AbortSignal): Promise<StoredObject> {
    if (!isSafeKey(key)) return Promise.reject(new UploadError(`refused object key ${JSON.stringify(key)}`));
    return this.using(target, (client) => this.putWith(client, target, key, path, signal));
  }

  private async putWith(
    client: S3Client,
    target: ResolvedS3,
    key: string,
    path: string,
    signal?: AbortSignal,
  ): Promise<StoredObject> {
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
      const message = `upload of ${key} to bucket ${target.bucketName} failed: ${why}`;
      // A refusal is refused again (the storage's 4xx, or the address policy refusing a caller-chosen endpoint at
      // connect time): not retried. Anything else (unreachable, 5xx, a timeout) may pass next time.
      const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
      if (status !== undefined && status >= 400 && status < 500)
        throw new UploadRejectedError(message, { storage_status: status }, { cause: err });
      if (err instanceof CallbackAddressError)
        throw new UploadRejectedError(message, undefined, { cause: err });
      throw new UploadError(message, undefined, { cause: err });
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
      await this.using(target, (client) =>
        client.send(new HeadBucketCommand({ Bucket: target.bucketName }), { abortSignal: signal }),
      );
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

  /**
   * Writes a small document (JSON) at `key`. With `ifAbsent` the write is conditional (`If-None-Match: *`): it
   * resolves false, writing nothing, when an object already has that key. Failure contract: anything else that
   * goes wrong rejects with StorageUnavailableError.
   */
  async putDocument(
    target: ResolvedS3,
    key: string,
    body: string,
    opts: { ifAbsent?: boolean; signal?: AbortSignal } = {},
  ): Promise<boolean> {
    if (!isSafeKey(key)) throw new StorageUnavailableError(`refused object key ${JSON.stringify(key)}`);
    try {
      await this.using(target, (client) =>
        client.send(
          new PutObjectCommand({
            Bucket: target.bucketName,
            Key: key,
            Body: body,
            ContentType: "application/json",
            ...(opts.ifAbsent && { IfNoneMatch: "*" }),
          }),
          { abortSignal: opts.signal ?? AbortSignal.timeout(10_000) },
        ),
      );
      return true;
    } catch (err) {
      if (opts.ifAbsent && statusOf(err) === 412) return false;
      throw new StorageUnavailableError(`writing ${key}: ${describe(err)}`, undefined, { cause: err });
    }
  }

  /** Reads a small document; undefined when there is none. Other failures reject with StorageUnavailableError. */
  async getDocument(target: ResolvedS3, key: string, signal?: AbortSignal): Promise<string | undefined> {
    if (!isSafeKey(key)) return undefined;
    try {
      return await this.using(target, async (client) => {
        const res = await client.send(new GetObjectCommand({ Bucket: target.bucketName, Key: key }), {
          abortSignal: signal ?? AbortSignal.timeout(10_000),
        });
        return (await res.Body?.transformToString("utf8")) ?? "";
      });
    } catch (err) {
      if (statusOf(err) === 404) return undefined;
      throw new StorageUnavailableError(`reading ${key}: ${describe(err)}`, undefined, { cause: err });
    }
  }

  /** A pre-signed GET URL for an object (a model reference `s3://`): read like any URL, ranges included. */
  presignGet(target: ResolvedS3, key: string, expiresIn: number): Promise<string> {
    return this.using(target, (client) =>
      getSignedUrl(client, new GetObjectCommand({ Bucket: target.bucketName, Key: key }), { expiresIn }),
    );
  }

  /** Whether an object exists (HeadObject). Failures other than "not found" reject with StorageUnavailableError. */
  async exists(target: ResolvedS3, key: string, signal?: AbortSignal): Promise<boolean> {
    if (!isSafeKey(key)) return false;
    try {
      await this.using(target, (client) =>
        client.send(new HeadObjectCommand({ Bucket: target.bucketName, Key: key }), {
          abortSignal: signal ?? AbortSignal.timeout(10_000),
        }),
      );
      return true;
    } catch (err) {
      if (statusOf(err) === 404) return false;
      throw new StorageUnavailableError(`checking ${key}: ${describe(err)}`, undefined, { cause: err });
    }
  }

  close(): void {
    for (const c of this.clients.values()) c.client.destroy();
    this.clients.clear();
  }
}
