import { randomUUID } from "node:crypto";
import WebSocket from "ws";
import type { BenchParts } from "./parts.js";
import { generateSync, workerEnv, startWorker } from "./parts.js";
import { median, quantile } from "./stats.js";

/** A model-free workflow that ComfyUI runs in a few milliseconds; the prefix makes every run unique. */
function tinyWorkflow(prefix: string) {
  return {
    "1": { class_type: "EmptyImage", inputs: { width: 8, height: 8, batch_size: 1, color: 0 } },
    "2": { class_type: "SaveImage", inputs: { images: ["1", 0], filename_prefix: prefix } },
  };
}

/**
 * What a bare caller of ComfyUI does at best: POST /prompt, wait on the WebSocket for the prompt's end, GET its
 * history. One WebSocket for all runs, as the worker has.
 */
export class DirectComfy {
  private ws!: WebSocket;
  private waiters = new Map<string, () => void>();
  readonly clientId = randomUUID();
  constructor(private readonly url: string) {}
  async open() {
    this.ws = new WebSocket(`${this.url.replace("http", "ws")}/ws?clientId=${this.clientId}`);
    this.ws.on("message", (data, binary) => {
      if (binary) return;
      const msg = JSON.parse(data.toString()) as {
        type: string;
        data: { node?: unknown; prompt_id?: string };
      };
      if (msg.type === "executing" && msg.data.node === null && msg.data.prompt_id)
        this.waiters.get(msg.data.prompt_id)?.();
    });
    await new Promise((r) => this.ws.once("open", r));
  }
  async run(workflow: unknown): Promise<void> {
    const promptId = randomUUID();
    const done = new Promise<void>((r) => this.waiters.set(promptId, r));
    const res = await fetch(`${this.url}/prompt`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt: workflow, client_id: this.clientId, prompt_id: promptId }),
    });
    if (res.status !== 200) throw new Error(`ComfyUI answered ${res.status}: ${await res.text()}`);
    await done;
    this.waiters.delete(promptId);
    const h = (await (await fetch(`${this.url}/history/${promptId}`)).json()) as Record<string, unknown>;
    if (!h[promptId]) throw new Error("no history");
  }
  close() {
    this.ws.close();
  }
}

export interface OverheadResult {
  runs: number;
  directMs: number[];
  workerMs: number[];
  diffMs: number[];
  p50: number;
  p99: number;
  ratio: number;
}

/**
 * Worker overhead: the same model-free workflow sent to ComfyUI directly and through the worker's local API
 * (no storage configured, so uploads are not counted), interleaved; differences of paired runs.
 */
export async function measureOverhead(parts: BenchParts, runs = 200): Promise<OverheadResult> {
  const { worker } = await startWorker(workerEnv(parts));
  const direct = new DirectComfy(parts.comfyUrl);
  await direct.open();
  const api = worker.apiUrl()!;
  const viaWorker = async (prefix: string) => {
    await generateSync(api, { workflow_json: tinyWorkflow(prefix) }, { timeoutMs: 60_000, completed: true });
  };
  const time = async (fn: () => Promise<void>) => {
    const t = performance.now();
    await fn();
    return performance.now() - t;
  };
  // Warm both paths.
  for (let i = 0; i < 10; i++) {
    await direct.run(tinyWorkflow(`warm-d-${randomUUID()}`));
    await viaWorker(`warm-w-${randomUUID()}`);
  }
  const directMs: number[] = [];
  const workerMs: number[] = [];
  for (let i = 0; i < runs; i++) {
    // Alternate which goes first so neither always follows the other.
    const d = () => time(() => direct.run(tinyWorkflow(`d-${randomUUID()}`)));
    const w = () => time(() => viaWorker(`w-${randomUUID()}`));
    if (i % 2 === 0) {
      directMs.push(await d());
      workerMs.push(await w());
    } else {
      workerMs.push(await w());
      directMs.push(await d());
    }
  }
  direct.close();
  await worker.stop(5_000);
  const diffMs = workerMs.map((w, i) => w - directMs[i]!);
  return {
    runs,
    directMs,
    workerMs,
    diffMs,
    p50: median(diffMs),
    p99: quantile(diffMs, 0.99),
    ratio: median(workerMs) / median(directMs),
  };
}
