import { randomUUID } from "node:crypto";
import { readdir, realpath, rm } from "node:fs/promises";
import { join } from "node:path";
import { parseModelReference } from "../../handlers/preprocess/model-folders.js";
import { ObjectStorage } from "../../handlers/storage/s3.js";
import { stack } from "../harness/stack.js";
import { postJson, startTestWorker, type TestWorker } from "../harness/worker.js";
import { tinyText2Image } from "../harness/workflows.js";

/**
 * s3:// model references read with the request's own `s3` settings, on the stack's SeaweedFS: the tiny checkpoint in
 * the second bucket (which the worker's own keys are not given for), at an endpoint the request names.
 */

let w: TestWorker;
let ref: string;
/** The checkpoint's file name in the bucket: unique, so this file's download is told apart from others'. */
let basename: string;
/** The stack's S3 under another name than the worker's S3_ENDPOINT_URL: a caller's endpoint to the worker. */
let callerEndpoint: string;

const checkpoints = () => join(stack().comfyBaseDir, "models", "checkpoints");
const mine = async () => (await readdir(checkpoints())).filter((n) => n.endsWith(basename));

beforeAll(async () => {
  const s = stack();
  basename = `tiny-${randomUUID()}.safetensors`;
  const key = `models-s3-test/${basename}`;
  const storage = new ObjectStorage({
    forcePathStyle: true,
    partSizeBytes: 64 * 1024 * 1024,
    presignExpirySeconds: 600,
    uploadTimeoutMs: 300_000,
  });
  try {
    await storage.put(
      {
        accessKeyId: s.s3AccessKeyId,
        secretAccessKey: s.s3SecretAccessKey,
        endpointUrl: s.s3Endpoint,
        bucketName: s.s3SecondBucket,
        region: s.s3Region,
      },
      key,
      await realpath(join(checkpoints(), "v1-5-pruned-emaonly-fp16.safetensors")),
    );
  } finally {
    storage.close();
  }
  ref = `s3://${s.s3SecondBucket}/${key}`;
  const endpoint = new URL(s.s3Endpoint);
  endpoint.hostname = "localhost";
  callerEndpoint = endpoint.origin;
  // The test worker allows private addresses (INPUT_URL_ALLOW_PRIVATE, WEBHOOK_ALLOW_PRIVATE): the stack is local.
  w = await startTestWorker();
});

afterAll(async () => {
  await w?.stop();
  for (const name of await mine().catch(() => [])) await rm(join(checkpoints(), name), { force: true });
});

const generate = (workflow: Record<string, any>, s3?: Record<string, string>) =>
  postJson(`${w.api}/generate/sync`, {
    input: { request_id: `models-s3-${randomUUID()}`, workflow_json: workflow, ...(s3 && { s3 }) },
  });
const codeOf = (body: any): string | undefined => body?.code ?? body?.error?.code;
const withCheckpoint = (ckpt: string) => {
  const wf = tinyText2Image(1);
  wf["4"].inputs.ckpt_name = ckpt;
  return wf;
};

test("without the request's keys another bucket than the worker's is refused: its keys stay with its bucket", async () => {
  const { status, body } = await generate(withCheckpoint(ref));
  expect([status, codeOf(body)]).toEqual([400, "model_bad_reference"]);
  expect(JSON.stringify(body)).toMatch(/s3\.access_key_id is required/);
  expect(await mine()).toEqual([]);
});

test("wrong keys in the request's s3: the caller's storage answers 403, model_access_denied, no key shown", async () => {
  const s = stack();
  const { status, body } = await generate(withCheckpoint(ref), {
    access_key_id: s.s3AccessKeyId,
    secret_access_key: "wrong-secret-DO-NOT-LEAK",
    endpoint_url: callerEndpoint,
  });
  expect([status, codeOf(body)]).toEqual([424, "model_access_denied"]);
  expect(JSON.stringify(body)).toMatch(/answered 403/);
  expect(JSON.stringify(body)).not.toContain("DO-NOT-LEAK");
  expect(JSON.stringify(body)).not.toContain("X-Amz-");
  expect(await mine()).toEqual([]);
});

test("the request's own keys and endpoint load s3://<their bucket>/<key>; outputs go to that storage too", async () => {
  const s = stack();
  const { status, body } = await generate(withCheckpoint(ref), {
    access_key_id: s.s3AccessKeyId,
    secret_access_key: s.s3SecretAccessKey,
    endpoint_url: callerEndpoint,
    bucket_name: s.s3SecondBucket,
  });
  expect([status, body.status]).toEqual([200, "completed"]);
  expect(String(body.output?.[0]?.url)).toMatch(new RegExp(`^${callerEndpoint}/${s.s3SecondBucket}/`));
  // Cached under whose storage it is: the caller's endpoint is part of the file's identity.
  const names = await mine();
  expect(names).toHaveLength(1);
  const plain = parseModelReference(ref, { hfEndpoint: "https://hub.example" }).stem;
  expect(names[0]).toMatch(/^od-[0-9a-f]{16}-/);
  expect(names[0]!.startsWith(plain)).toBe(false);
});
