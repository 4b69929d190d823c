import { randomUUID } from "node:crypto";
import { cp, mkdtemp } from "node:fs/promises";
import { join } from "node:path";
import { freePort } from "../../scripts/services/child.js";
import { ensureComfyUI, startComfyUI } from "../../scripts/services/comfyui.js";
import { captureLog } from "../harness/log-capture.js";
import { stack } from "../harness/stack.js";
import { postJson, repoRoot, startTestWorker } from "../harness/worker.js";
import { modelFree } from "../harness/workflows.js";

/**
 * A prompt that really stalls: a ComfyUI of this test's own loads one test-only node (test/fixtures/custom_nodes),
 * which runs until a file appears and says nothing meanwhile; ComfyUI's interrupt ends it.
 */
test("a stalled prompt is interrupted and fails `stalled` (retryable), its backend is probed, the next job runs", async () => {
  const install = await ensureComfyUI();
  const baseDir = await mkdtemp(join(stack().tmpRoot, "stall-comfy-"));
  await cp(
    join(repoRoot, "test/fixtures/custom_nodes/worker_test_stall"),
    join(baseDir, "custom_nodes/worker_test_stall"),
    { recursive: true },
  );
  const comfy = await startComfyUI({
    install,
    host: "127.0.0.1",
    port: await freePort(),
    baseDir,
    logFile: join(baseDir, "comfyui.log"),
    customNodes: ["worker_test_stall"],
  });
  const log = captureLog("info");
  // STALL_TIMEOUT_MS caps the timeout derived from the job's prediction, and wins over its floor.
  const w = await startTestWorker(
    { COMFYUI_URL: comfy.url, COMFYUI_BASE_DIR: baseDir, STALL_TIMEOUT_MS: "3000" },
    { logger: log.logger },
  );
  try {
    const stalling = {
      "1": { class_type: "EmptyImage", inputs: { width: 8, height: 8, batch_size: 1, color: 0 } },
      "2": {
        class_type: "WorkerTestStall",
        // A file that never appears: only the interrupt ends the node.
        inputs: { image: ["1", 0], release_file: join(baseDir, `never-${randomUUID()}`) },
      },
      "3": { class_type: "PreviewImage", inputs: { images: ["2", 0] } },
    };
    const { status, body } = await postJson(`${w.api}/generate/sync`, { input: { workflow_json: stalling } });
    expect(status).toBe(503);
    expect(body.status).toBe("failed");
    expect(body.error).toMatchObject({ code: "stalled" });
    expect(body.error.error).toMatch(/no execution event or progress for 3 s/);
    await log.waitFor(/passed its health probe: it stays in service/);

    // The interrupt ended the node: the backend runs the next job.
    const after = await postJson(`${w.api}/generate/sync`, { input: { workflow_json: modelFree() } });
    expect(after.status).toBe(200);
    expect(after.body.status).toBe("completed");
  } finally {
    await w.stop();
    await comfy.stop();
  }
});
