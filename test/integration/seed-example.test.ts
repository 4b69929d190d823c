import { RecordingServer } from "../harness/http-fixtures.js";
import { expectProgressToMax } from "../harness/progress.js";
import { postJson, startTestWorker, type TestWorker } from "../harness/worker.js";
import { loadWorkflow } from "../harness/workflows.js";

/**
 * The template's documented example, unchanged but for the webhook address: SD1.5 at 512x512 with 20 steps on
 * the tiny checkpoint. On 2 idle CPU cores this takes about 4.5 minutes, much longer when the cores are shared: its
 * request and test deadlines are explicit and generous. It is the one test that runs the full size.
 */
let w: TestWorker;
let hooks: RecordingServer;
beforeAll(async () => {
  hooks = await new RecordingServer().start();
  w = await startTestWorker();
});
afterAll(async () => {
  await w?.stop();
  await hooks?.stop();
});

test("the seed's example payload completes: a PNG from node 9 behind a pre-signed URL, progress, webhook extra", async () => {
  const payload = {
    input: {
      request_id: "",
      workflow_json: loadWorkflow("misc/workflows/sd15_text2image.json"),
      s3: { access_key_id: "", secret_access_key: "", endpoint_url: "", bucket_name: "", region: "" },
      webhook: { url: `${hooks.url}/seed`, extra_params: { user_id: "12345", project_id: "abc-def" } },
    },
  };
  const { status, body } = await postJson(`${w.api}/generate/sync`, payload, { timeoutMs: 1_500_000 });
  expect(status).toBe(200);
  expect(body.status).toBe("completed");
  expect(body.id).toMatch(/^[0-9a-f-]{36}$/);
  expect(body.output).toHaveLength(1);
  expect(body.output[0]).toMatchObject({ node_id: "9", output_type: "images", type: "output" });
  const png = await fetch(body.output[0].url);
  expect(png.status).toBe(200);
  const bytes = Buffer.from(await png.arrayBuffer());
  expect(bytes.subarray(1, 4).toString()).toBe("PNG");
  expect(bytes.readUInt32BE(16)).toBe(512); // IHDR width
  // ComfyUI may throttle progress events (newer versions send at most one per 100 ms): increasing, ending at max.
  expectProgressToMax(body.comfyui_response.execution_details.progress_updates, 20);
  await hooks.waitFor(1);
  expect(JSON.parse(hooks.received[0]!.body)).toMatchObject({
    id: body.id,
    status: "completed",
    extra: { user_id: "12345", project_id: "abc-def" },
  });
}, 1_800_000);
