import { lookup } from "node:dns/promises";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import type { S3Settings } from "../../config/index.js";
import { isBlockedAddress } from "../../handlers/preprocess/address-policy.js";
import { MODEL_DIRS, parseModelReference } from "../../handlers/preprocess/model-folders.js";
import { ModelFetcher } from "../../handlers/preprocess/models.js";
import { ObjectStorage } from "../../handlers/storage/s3.js";
import { ModelAccessDeniedError, ModelReferenceError } from "../../lib/errors.js";
import { RecordingServer } from "../harness/http-fixtures.js";

/**
 * Which storage an s3:// model reference reads: the request's `s3` settings (keys, endpoint) over the operator's,
 * pre-signed by the real SDK and read from two local HTTP servers standing in for two S3 endpoints (they check no
 * signature: they answer by the access key id the pre-signed URL carries, which is what a fault of the caller's
 * keys looks like from here: a 403).
 */

const CHECKPOINTS = { folder: "checkpoints", dir: "checkpoints" };
const OPERATOR = { accessKeyId: "OPERATORKEY", secretAccessKey: "operator-secret", bucketName: "models" };
const CALLER = { accessKeyId: "CALLERKEY", secretAccessKey: "caller-secret-DO-NOT-LEAK" };

/** An S3 stand-in: GET /<bucket>/<key> answers `body` to the access key it accepts, 403 to any other. */
async function endpoint(body: string, accepts: string): Promise<RecordingServer> {
  const server = await new RecordingServer().start();
  server.handler = (req, res) => {
    const credential = new URL(req.url, "http://x").searchParams.get("X-Amz-Credential") ?? "";
    if (!credential.startsWith(`${accepts}/`)) return void res.writeHead(403).end("AccessDenied");
    res.writeHead(200, { "content-length": Buffer.byteLength(body) }).end(body);
  };
  return server;
}

let dir: string;
let operatorS3: RecordingServer;
let callerS3: RecordingServer;
let storage: ObjectStorage;

beforeAll(async () => {
  operatorS3 = await endpoint("operator's bytes", OPERATOR.accessKeyId);
  callerS3 = await endpoint("caller's bytes", CALLER.accessKeyId);
  storage = new ObjectStorage({
    forcePathStyle: true,
    partSizeBytes: 8 * 1024 * 1024,
    presignExpirySeconds: 600,
    uploadTimeoutMs: 10_000,
  });
});

afterAll(async () => {
  storage.close();
  await operatorS3.stop();
  await callerS3.stop();
});

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "models-s3-"));
  operatorS3.received.length = 0;
  callerS3.received.length = 0;
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const fetcher = (allowPrivate = true) =>
  new ModelFetcher({
    modelsDir: dir,
    dirs: MODEL_DIRS,
    maxBytes: 1024 ** 2,
    cacheMaxBytes: 1024 ** 2,
    timeoutMs: 10_000,
    allowPrivate,
    hfEndpoint: "https://hub.example",
    s3: {
      env: { ...OPERATOR, endpointUrl: operatorS3.url, region: "us-east-1" },
      presignGet: (target, key) => storage.presignGet(target, key, 600),
    },
  });

const contents = (file: string) => readFile(join(dir, file), "utf8");
const paths = (s: RecordingServer) => s.received.map((r) => r.url.split("?")[0]);
const plainStem = (ref: string) => parseModelReference(ref, { hfEndpoint: "https://hub.example" }).stem;

test("without the request's keys: the operator's bucket with the operator's keys; another bucket is refused", async () => {
  const f = fetcher();
  const ref = "s3://models/ckpt/tiny.safetensors";
  const got = await f.fetch(ref, CHECKPOINTS);
  expect(await contents(got.file)).toBe("operator's bytes");
  expect(got.name.startsWith(plainStem(ref))).toBe(true);
  expect(paths(operatorS3)).toEqual(["/models/ckpt/tiny.safetensors"]);
  // The operator's keys never sign for a bucket they were not given for, nor for a caller's endpoint.
  await expect(f.fetch("s3://elsewhere/tiny.safetensors", CHECKPOINTS)).rejects.toThrow(ModelReferenceError);
  await expect(
    f.fetch("s3://models/other.safetensors", CHECKPOINTS, undefined, undefined, {
      endpointUrl: callerS3.url,
    }),
  ).rejects.toThrow(/s3\.access_key_id is required when s3\.endpoint_url is set/);
  expect(operatorS3.received).toHaveLength(1);
  expect(callerS3.received).toHaveLength(0);
});

test("the request's keys and endpoint: that storage is read, under its own cache identity", async () => {
  const f = fetcher();
  const ref = "s3://models/ckpt/tiny.safetensors";
  const operators = await f.fetch(ref, CHECKPOINTS);
  const request: S3Settings = { ...CALLER, endpointUrl: callerS3.url, bucketName: "outputs" };
  // The same s3:// path at the caller's endpoint is another object: neither served the operator's cached file nor
  // put where the operator's reference finds it.
  const callers = await f.fetch(ref, CHECKPOINTS, undefined, undefined, request);
  expect(callers.name).not.toBe(operators.name);
  expect(await contents(callers.file)).toBe("caller's bytes");
  expect(paths(callerS3)).toEqual(["/models/ckpt/tiny.safetensors"]);
  expect(callerS3.received[0]!.url).toContain(`X-Amz-Credential=${CALLER.accessKeyId}%2F`);
  expect(await f.fetch(ref, CHECKPOINTS)).toEqual(operators);
  expect(await contents(operators.file)).toBe("operator's bytes");
  expect(operatorS3.received).toHaveLength(1);
  // The caller's storage named again is its cached file (one download); another endpoint is another file.
  expect(await f.fetch(ref, CHECKPOINTS, undefined, undefined, request)).toEqual(callers);
  const elsewhere = { ...request, endpointUrl: `${callerS3.url}/` };
  expect((await f.fetch(ref, CHECKPOINTS, undefined, undefined, elsewhere)).name).not.toBe(callers.name);
  expect(callerS3.received).toHaveLength(2);
});

test("the request's keys at the operator's endpoint: any bucket, the plain reference's file", async () => {
  const f = fetcher();
  const ref = "s3://caller-bucket/tiny.safetensors";
  // The operator's endpoint answers the operator's key only: the caller's key is a 403 there.
  await expect(f.fetch(ref, CHECKPOINTS, undefined, undefined, CALLER)).rejects.toThrow(
    ModelAccessDeniedError,
  );
  expect(operatorS3.received[0]!.url).toContain(`X-Amz-Credential=${CALLER.accessKeyId}%2F`);
  expect(paths(operatorS3)).toEqual(["/caller-bucket/tiny.safetensors"]);
});

test("a 403 from the caller's storage is model_access_denied, its keys in no message", async () => {
  const f = fetcher();
  const wrong = {
    accessKeyId: "WRONGKEY",
    secretAccessKey: "wrong-secret-DO-NOT-LEAK",
    endpointUrl: callerS3.url,
  };
  const err: unknown = await f
    .fetch("s3://models/tiny.safetensors", CHECKPOINTS, undefined, undefined, wrong)
    .catch((e: unknown) => e);
  if (!(err instanceof ModelAccessDeniedError))
    throw new Error(`expected model_access_denied, got ${String(err)}`);
  expect([err.code, err.httpStatus]).toEqual(["model_access_denied", 424]);
  const shown = JSON.stringify({ message: err.message, details: err.details, stack: err.stack });
  for (const secret of ["WRONGKEY", "wrong-secret", "X-Amz-Signature"]) expect(shown).not.toContain(secret);
});

test("a caller's endpoint goes through the address policy; the operator's does not", async () => {
  const strict = fetcher(false);
  // The operator's endpoint is the operator's choice (here a loopback address): read without the policy.
  const ok = await strict.fetch("s3://models/tiny.safetensors", CHECKPOINTS);
  expect(await contents(ok.file)).toBe("operator's bytes");
  // A caller's literal private address is refused before anything is signed or sent.
  await expect(
    strict.fetch("s3://models/a.safetensors", CHECKPOINTS, undefined, undefined, {
      ...CALLER,
      endpointUrl: callerS3.url,
    }),
  ).rejects.toThrow(/s3\.endpoint_url: address 127\.0\.0\.1 is not allowed/);
  // A name that passes the literal check is refused at connect time, by the address DNS gives: the download of a
  // caller's endpoint runs in the guarded client. (This machine's own name resolves to a private address.)
  const name = hostname();
  expect(isBlockedAddress((await lookup(name)).address)).toBe(true);
  const port = new URL(callerS3.url).port;
  await expect(
    strict.fetch("s3://models/b.safetensors", CHECKPOINTS, undefined, undefined, {
      ...CALLER,
      endpointUrl: `http://${name}:${port}`,
    }),
  ).rejects.toThrow(/resolves to .*not allowed/);
  expect(callerS3.received).toHaveLength(0);
});
