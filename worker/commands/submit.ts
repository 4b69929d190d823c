import { readFile } from "node:fs/promises";
import { got } from "got";
import type { ResultDocument } from "../jobs/job.js";

type StreamLine =
  | { type: "status"; status: string; message: string }
  | { type: "progress"; node: string | null; value: number; max: number; percent: number }
  | ({ type: "result" } & ResultDocument)
  | { type: "executing" | "executed" | "cached" };

/**
 * `comfyui-worker submit <workflow.json>`: sends a workflow to a running worker's local API, streams its progress
 * and prints the output URLs. The file may hold a bare API-format workflow or a whole `{"input": {...}}` request.
 */
export async function submitCommand(
  file: string,
  opts: { url: string; requestId?: string; timeout: string },
): Promise<number> {
  const out = process.stdout;
  const parsed = JSON.parse(await readFile(file, "utf8")) as Record<string, unknown>;
  const input = (parsed.input as Record<string, unknown> | undefined) ?? { workflow_json: parsed };
  if (opts.requestId) input.request_id = opts.requestId;
  // got, with the whole request bounded by --timeout: fetch (undici) has its own 300 s limits on headers and
  // between body chunks, which a long job (a model loading, a slow step on a shared CPU) may exceed.
  const stream = got.stream.post(`${opts.url.replace(/\/+$/, "")}/generate/stream`, {
    json: { input },
    timeout: { request: Number(opts.timeout) * 1000 },
    retry: { limit: 0 },
    throwHttpErrors: false,
  });
  const res = await new Promise<{ statusCode: number }>((resolve, reject) => {
    stream.once("response", resolve);
    stream.once("error", reject);
  });
  if (res.statusCode !== 200) {
    let text = "";
    for await (const chunk of stream) text += String(chunk);
    out.write(`the worker answered ${res.statusCode}: ${text}\n`);
    return 1;
  }
  let buffered = "";
  let result: ResultDocument | undefined;
  const decoder = new TextDecoder();
  for await (const chunk of stream as AsyncIterable<Uint8Array>) {
    buffered += decoder.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, nl).trim();
      buffered = buffered.slice(nl + 1);
      if (!line) continue;
      const event = JSON.parse(line) as StreamLine;
      if (event.type === "status") out.write(`${event.status}: ${event.message}\n`);
      else if (event.type === "progress")
        out.write(`  node ${event.node} step ${event.value}/${event.max} (${event.percent}%)\n`);
      else if (event.type === "result") result = event;
    }
  }
  if (!result) {
    out.write("the stream ended without a result\n");
    return 1;
  }
  out.write(`\n${result.status}: ${result.message} (${result.timings?.total_ms} ms)\n`);
  for (const o of result.output ?? []) {
    out.write(
      `  ${o.node_id} ${o.output_type} ${o.filename}\n    ${o.url ?? o.local_path}${o.upload_error ? `\n    upload failed: ${o.upload_error}` : ""}\n`,
    );
  }
  return result.status === "completed" ? 0 : 1;
}
