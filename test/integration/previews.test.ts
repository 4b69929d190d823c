import { randomUUID } from "node:crypto";
import type { ConsoleJob } from "../../web/console/wire.js";
import { imageSize, sniffMime } from "../../handlers/comfyui/previews.js";
import { summarize } from "../../worker/console/feed.js";
import type { Job } from "../../worker/jobs/job.js";
import { stack } from "../harness/stack.js";
import { startTestWorker, type TestWorker } from "../harness/worker.js";
import { tinyText2Image } from "../harness/workflows.js";

/**
 * Live previews on /generate/stream, on the real ComfyUI. What the server sends depends on its version: from 0.5.0 a
 * prompt's `extra_data.preview_method` asks for its previews; before, only the server's `--preview-method` does, and
 * the test stack starts ComfyUI with its default (`none`), so a 0.3.75 stack sends none and the job must simply
 * complete as it would without them.
 */

let w: TestWorker;
let perPrompt: boolean;
let version: string;

beforeAll(async () => {
  w = await startTestWorker();
  const res = await fetch(`${stack().comfyUrl}/system_stats`, { signal: AbortSignal.timeout(10_000) });
  version = ((await res.json()) as { system: { comfyui_version: string } }).system.comfyui_version;
  const [major, minor] = version.split(".").map(Number) as [number, number];
  perPrompt = major > 0 || minor >= 5;
});
afterAll(async () => {
  await w?.stop();
});

async function stream(input: Record<string, unknown>): Promise<any[]> {
  const res = await fetch(`${w.api}/generate/stream`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ input }),
    signal: AbortSignal.timeout(300_000),
  });
  expect(res.status).toBe(200);
  return (await res.text())
    .split("\n")
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l));
}

test("a sampler of 20 steps with `preview` set: preview lines with a decodable image within max_px, on the operator page too", async () => {
  const id = `preview-${randomUUID()}`;
  // The operator page's summary of the running job, taken as each preview goes out.
  const summaries: ConsoleJob[] = [];
  const onCreated = (job: Job) => {
    if (job.id !== id) return;
    job.on("event", (e: { type: string }) => {
      if (e.type === "preview") summaries.push(summarize(job));
    });
  };
  w.worker.events.on("job.created", onCreated);
  let lines: any[];
  try {
    lines = await stream({
      request_id: id,
      workflow_json: tinyText2Image(20),
      preview: { max_px: 64, every_ms: 100 },
    });
  } finally {
    w.worker.events.off("job.created", onCreated);
  }
  const last = lines.at(-1);
  expect(last).toMatchObject({ type: "result", message: expect.stringMatching(/^Completed/) });
  const previews = lines.filter((l) => l.type === "preview");
  if (!perPrompt) {
    // ComfyUI < 0.5.0 takes no per-prompt preview method: with the server's default, no previews, no failure.
    expect(previews).toEqual([]);
    expect(summaries).toEqual([]);
    return;
  }
  expect(previews.length).toBeGreaterThanOrEqual(1);
  for (const p of previews) {
    // ComfyUI sends 512 px frames (its --preview-size): shrunk to 64 px, as JPEG.
    expect(p).toMatchObject({ id, type: "preview", node: "3", mime: "image/jpeg", width: 64, height: 64 });
    const image = Buffer.from(p.data, "base64");
    expect(sniffMime(image)).toBe("image/jpeg");
    // A whole JPEG: it ends with its end-of-image marker.
    expect(image.subarray(-2).toString("hex")).toBe("ffd9");
    const size = imageSize(image)!;
    expect(size).toEqual({ width: p.width, height: p.height });
    expect(Math.max(size.width, size.height)).toBeLessThanOrEqual(64);
    expect(p.max).toBe(20);
    expect(p.step).toBeGreaterThanOrEqual(1);
    expect(p.step).toBeLessThanOrEqual(20);
  }
  // Steps go forward: the throttle drops frames, never reorders them.
  const steps = previews.map((p) => p.step as number);
  expect([...steps].sort((a, b) => a - b)).toEqual(steps);
  expect(summaries.length).toBe(previews.length);
  expect(summaries.at(-1)!.preview).toEqual({
    src: `data:image/jpeg;base64,${previews.at(-1).data}`,
    node: "3",
    step: previews.at(-1).step,
  });
  // The finished job's summary carries no preview.
  expect(w.worker.jobs.get(id) && summarize(w.worker.jobs.get(id)!).preview).toBeFalsy();
});

test("a frame within max_px is passed on as ComfyUI sent it (JPEG)", async () => {
  const lines = await stream({ workflow_json: tinyText2Image(6), preview: { max_px: 2048, every_ms: 100 } });
  expect(lines.at(-1)).toMatchObject({ type: "result", message: expect.stringMatching(/^Completed/) });
  const previews = lines.filter((l) => l.type === "preview");
  if (!perPrompt) return void expect(previews).toEqual([]);
  expect(previews.length).toBeGreaterThanOrEqual(1);
  for (const p of previews) {
    expect(p).toMatchObject({ mime: "image/jpeg", node: "3" });
    const image = Buffer.from(p.data, "base64");
    expect(sniffMime(image)).toBe("image/jpeg");
    expect(image.subarray(-2).equals(Buffer.from([0xff, 0xd9]))).toBe(true);
    expect(imageSize(image)).toEqual({ width: p.width, height: p.height });
    expect(Math.max(p.width, p.height)).toBeLessThanOrEqual(2048);
  }
});

test("without `preview`: no preview lines", async () => {
  const lines = await stream({ workflow_json: tinyText2Image(20) });
  expect(lines.at(-1)).toMatchObject({ type: "result", message: expect.stringMatching(/^Completed/) });
  expect(lines.filter((l) => l.type === "preview")).toEqual([]);
});

test("a bad `preview` is refused before anything runs", async () => {
  const res = await fetch(`${w.api}/generate/sync`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ input: { workflow_json: tinyText2Image(1), preview: { every_ms: 10 } } }),
    signal: AbortSignal.timeout(30_000),
  });
  expect(res.status).toBe(400);
  const body = (await res.json()) as any;
  expect(JSON.stringify(body)).toMatch(/preview\.every_ms/);
});
