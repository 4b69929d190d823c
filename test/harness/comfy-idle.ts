import { stack } from "./stack.js";

/**
 * Every integration file leaves the shared ComfyUI as it found it: nothing running, nothing queued. A prompt that a
 * file leaves behind would be the next file's wait, and a test with a bounded window (a drain) fails there for a
 * cause that is not its own. A file's leftovers are waited for here, so the time lands on the file that caused it;
 * what does not end within the bound is cleared and fails that file.
 */

const boundMs = 120_000;

interface Queue {
  queue_running: unknown[][];
  queue_pending: unknown[][];
}

async function queue(comfyUrl: string): Promise<Queue> {
  const res = await fetch(`${comfyUrl}/queue`, { signal: AbortSignal.timeout(10_000) });
  if (!res.ok) throw new Error(`the shared ComfyUI answered GET /queue with ${res.status}`);
  return (await res.json()) as Queue;
}

const promptIds = (q: Queue) => [...q.queue_running, ...q.queue_pending].map((item) => String(item[1]));

afterAll(async () => {
  const { comfyUrl } = stack();
  const started = Date.now();
  let left = promptIds(await queue(comfyUrl));
  if (left.length === 0) return;
  const first = left;
  while (left.length > 0 && Date.now() - started < boundMs) {
    await new Promise((r) => setTimeout(r, 200));
    left = promptIds(await queue(comfyUrl));
  }
  if (left.length > 0) {
    const post = (path: string, body: unknown) =>
      fetch(`${comfyUrl}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(10_000),
      });
    await post("/queue", { clear: true });
    await post("/interrupt", {});
    throw new Error(
      `this file left prompts in the shared ComfyUI that had not ended ${boundMs} ms after its last test ` +
        `(cleared): ${left.join(", ")}`,
    );
  }
  const waited = Date.now() - started;
  if (waited > 1_000) {
    process.stderr.write(
      `[comfyui] this file left ${first.length} prompt(s) in the shared ComfyUI; they ended ${waited} ms after its last test\n`,
    );
  }
}, boundMs + 30_000);
