import { randomUUID } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { GetObjectCommand, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { getSignedUrl } from "@aws-sdk/s3-request-presigner";
import { stack } from "../harness/stack.js";
import { repoRoot } from "../harness/worker.js";

/** Smoke tests of the real parts themselves: they fail if ComfyUI, the tiny checkpoint or S3 is missing. */

async function runOnComfy(workflow: unknown): Promise<Record<string, any>> {
  const { comfyUrl } = stack();
  const promptId = randomUUID();
  const res = await fetch(`${comfyUrl}/prompt`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ prompt: workflow, prompt_id: promptId, client_id: "smoke" }),
  });
  expect(res.status).toBe(200);
  for (;;) {
    const h = (await (await fetch(`${comfyUrl}/history/${promptId}`)).json()) as Record<string, any>;
    if (h[promptId]) return h[promptId];
    await new Promise((r) => setTimeout(r, 100));
  }
}

test("ComfyUI runs a model-free workflow and serves its files from /view", async () => {
  const workflow = JSON.parse(
    await readFile(join(repoRoot, "test/fixtures/workflows/model-free.json"), "utf8"),
  );
  workflow["3"].inputs.filename_prefix = `smoke-${randomUUID()}`;
  const entry = await runOnComfy(workflow);
  expect(entry.status.status_str).toBe("success");
  const images = entry.outputs["3"].images as { filename: string; subfolder: string; type: string }[];
  expect(images).toHaveLength(2);
  const anim = entry.outputs["4"].images as { filename: string }[];
  expect(anim[0]!.filename).toMatch(/\.webp$/);
  const img = images[0]!;
  const view = await fetch(`${stack().comfyUrl}/view?${new URLSearchParams({ ...img })}`);
  expect(view.status).toBe(200);
  const bytes = Buffer.from(await view.arrayBuffer());
  expect(bytes.subarray(1, 4).toString()).toBe("PNG");
});

test("the seed's SD1.5 workflow runs on ComfyUI with the tiny checkpoint and saves a PNG", async () => {
  const workflow = JSON.parse(await readFile(join(repoRoot, "misc/workflows/sd15_text2image.json"), "utf8"));
  workflow["3"].inputs.seed = 42;
  workflow["5"].inputs.width = 64;
  workflow["5"].inputs.height = 64;
  workflow["3"].inputs.steps = 3;
  const entry = await runOnComfy(workflow);
  expect(entry.status.status_str).toBe("success");
  expect(entry.outputs["9"].images[0].filename).toMatch(/\.png$/);
});

test("S3: put, pre-signed GET and fetch round-trip", async () => {
  const s = stack();
  const client = new S3Client({
    endpoint: s.s3Endpoint,
    region: s.s3Region,
    forcePathStyle: true,
    credentials: { accessKeyId: s.s3AccessKeyId, secretAccessKey: s.s3SecretAccessKey },
  });
  const key = `smoke/${randomUUID()}.txt`;
  const body = `hello ${randomUUID()}`;
  await client.send(
    new PutObjectCommand({ Bucket: s.s3Bucket, Key: key, Body: body, ContentType: "text/plain" }),
  );
  const url = await getSignedUrl(client, new GetObjectCommand({ Bucket: s.s3Bucket, Key: key }), {
    expiresIn: 60,
  });
  const res = await fetch(url);
  expect(res.status).toBe(200);
  expect(await res.text()).toBe(body);
  client.destroy();
  await writeFile(join(s.tmpRoot, "s3-ok"), "1");
});
