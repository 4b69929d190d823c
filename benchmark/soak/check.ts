import { readdir, stat } from "node:fs/promises";
import { extname, join } from "node:path";
import { HeadObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { CACHE_PREFIX } from "../../handlers/preprocess/input-cache.js";
import type { FaultRecord } from "./faults.js";
import { INPUT_CACHE_MAX_FILES, type Fleet } from "./fleet.js";
import {
  CLIENT_MISTAKES,
  RETRYABLE_HTTP,
  SESSION_LIFETIME_S,
  type Doc,
  type LedgerEntry,
} from "./traffic.js";
import type { CloseCall, Delivery } from "./webhooks.js";

/** How much a worker's resident memory may grow between the start of the traffic (or its restart) and the end. */
export const RSS_GROWTH_BOUND_BYTES = 192 * 1024 * 1024;
/** Retryable answers about the worker's state, not about the request (a subset of lib/errors.ts's retryable codes). */
const STATE_CODES = new Set(["comfyui_unavailable", "not_ready"]);
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const CONTENT_TYPES: Record<string, string> = { ".png": "image/png", ".webp": "image/webp" };

export interface InvariantResult {
  name: string;
  checked: number;
  violations: string[];
}

export interface CheckInput {
  fleet: Fleet;
  ledger: LedgerEntry[];
  deliveries: Delivery[];
  /** The sessions' on_close calls the receiver heard. */
  closes: CloseCall[];
  /** The faults injected (their times are ms since `t0`). */
  faults: FaultRecord[];
  t0: number;
  /** Requests in flight at once (jobs that held a cached input while the cache last evicted). */
  concurrency: number;
  /** Resident memory (bytes) of each worker when the traffic started (or it restarted), and at the end. */
  rss: { start: (number | undefined)[]; end: (number | undefined)[] };
}

/** Reads the worker's process_resident_memory_bytes (prefixed comfyui_worker_) from its /metrics. */
export async function readRss(api: string): Promise<number | undefined> {
  const text = await fetch(`${api}/metrics`, { signal: AbortSignal.timeout(10_000) })
    .then((r) => r.text())
    .catch(() => "");
  const m = /^(?:comfyui_worker_)?process_resident_memory_bytes\s+(\d+(?:\.\d+)?(?:e\+\d+)?)/m.exec(text);
  return m ? Number(m[1]) : undefined;
}

async function result(
  api: string,
  id: string,
): Promise<{ status: number; body: Doc | undefined } | undefined> {
  return fetch(`${api}/result/${encodeURIComponent(id)}`, { signal: AbortSignal.timeout(10_000) })
    .then(async (r) => ({
      status: r.status,
      body: (await r.json().catch(() => undefined)) as Doc | undefined,
    }))
    .catch(() => undefined);
}

async function walk(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  const out: string[] = [];
  for (const e of entries) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await walk(p)));
    else out.push(p);
  }
  return out;
}

/** Proves the soak's invariants from the ledger, the workers' answers and logs, S3 and the folders. */
export async function check(input: CheckInput): Promise<InvariantResult[]> {
  const { fleet, ledger } = input;
  const accepted = ledger.filter((e) => e.accepted);
  const docs = new Map<string, (Doc | undefined)[]>();
  for (const e of accepted) {
    docs.set(
      e.request_id,
      await Promise.all(fleet.workers.map(async (w) => (await result(w.api, e.request_id))?.body)),
    );
  }

  // 1. One terminal state, the same on every worker, and the one the client was told when it was told one.
  const terminal: InvariantResult = {
    name: "one terminal state, same on every worker",
    checked: 0,
    violations: [],
  };
  for (const e of accepted) {
    terminal.checked++;
    const seen = docs.get(e.request_id)!.map((d) => d?.status as string | undefined);
    // A retryable failure is not an end: the same request again (the client's retry) runs it anew, and what that
    // answered is what the client was told last.
    const retry =
      e.doc?.status === "failed" && e.http !== undefined && RETRYABLE_HTTP(e.http) ? e.repeat : undefined;
    const retriedFailure = retry !== undefined;
    const told = (retry ? retry.status : e.doc?.status) as string | undefined;
    if (!seen.every((s) => s !== undefined && TERMINAL.has(s)) || new Set(seen).size !== 1) {
      terminal.violations.push(
        `${e.request_id} (${e.kind}): workers say ` +
          docs
            .get(e.request_id)!
            .map((d) => String(d?.status ?? d?.code))
            .join(" / "),
      );
    } else if (told !== undefined && TERMINAL.has(told) && told !== seen[0]) {
      terminal.violations.push(
        `${e.request_id} (${e.kind}): the client was told ${told}, workers say ${seen[0]}`,
      );
    }
    if (e.repeat && e.doc && TERMINAL.has(String(e.doc.status))) {
      if (e.repeat.id !== e.request_id || (!retriedFailure && e.repeat.status !== e.doc.status))
        terminal.violations.push(
          `${e.request_id} (retry): first ${String(e.doc.status)}, the same request again answered ` +
            `${String(e.repeat.http)} ${String(e.repeat.id)} ${String(e.repeat.status)}`,
        );
    }
  }

  // 2. No request_id completed twice in ComfyUI: each run ends in one "job <status>" line of its worker's log.
  const once: InvariantResult = {
    name: "no request_id completed twice (workers' logs)",
    checked: 0,
    violations: [],
  };
  const completedRuns = new Map<string, string[]>();
  for (const w of fleet.workers) {
    for (const l of await w.logLines()) {
      if (
        typeof l.request_id !== "string" ||
        l.msg === undefined ||
        !String(l.msg).startsWith("job completed")
      )
        continue;
      completedRuns.set(l.request_id, [...(completedRuns.get(l.request_id) ?? []), `worker ${w.index + 1}`]);
    }
  }
  for (const e of ledger) {
    if (!e.accepted) continue;
    once.checked++;
    const runs = completedRuns.get(e.request_id) ?? [];
    if (runs.length > 1)
      once.violations.push(
        `${e.request_id} (${e.kind}): completed ${runs.length} times (${runs.join(", ")})`,
      );
  }

  // 3. Every completed job's outputs are in S3, of the content type their name says, and as large as the file kept.
  const stored: InvariantResult = {
    name: "completed outputs in S3 (type, size)",
    checked: 0,
    violations: [],
  };
  const s3 = new S3Client({
    endpoint: fleet.s3.endpoint,
    region: fleet.s3.region,
    forcePathStyle: true,
    credentials: { accessKeyId: fleet.s3.accessKeyId, secretAccessKey: fleet.s3.secretAccessKey },
  });
  for (const e of accepted) {
    const doc = docs.get(e.request_id)!.find((d) => d?.status === "completed");
    if (!doc) continue;
    for (const out of doc.output ?? []) {
      stored.checked++;
      const where = `${e.request_id} ${String(out.filename)}`;
      if (typeof out.url !== "string") {
        stored.violations.push(`${where}: no url`);
        continue;
      }
      const path = decodeURIComponent(new URL(out.url).pathname);
      const key = path.replace(new RegExp(`^/${fleet.bucket}/`), "");
      try {
        const head = await s3.send(new HeadObjectCommand({ Bucket: fleet.bucket, Key: key }));
        const want = CONTENT_TYPES[extname(String(out.filename)).toLowerCase()];
        if (want && head.ContentType !== want)
          stored.violations.push(`${where}: content type ${String(head.ContentType)}, not ${want}`);
        const local =
          typeof out.local_path === "string" ? await stat(out.local_path).catch(() => undefined) : undefined;
        if (!head.ContentLength) stored.violations.push(`${where}: empty in S3`);
        else if (local && local.size !== head.ContentLength)
          stored.violations.push(`${where}: ${head.ContentLength} bytes in S3, ${local.size} on disk`);
      } catch (err) {
        stored.violations.push(
          `${where}: not in S3 (${key}): ${err instanceof Error ? err.name : String(err)}`,
        );
      }
    }
  }
  s3.destroy();

  // 4. Every webhook arrived signed, or its failure is recorded on the job with a cause.
  const hooks: InvariantResult = {
    name: "webhooks delivered signed, or failure recorded",
    checked: 0,
    violations: [],
  };
  for (const d of input.deliveries) {
    if (!d.valid) hooks.violations.push(`${d.request_id}: a delivery with an invalid signature`);
  }
  for (const e of accepted) {
    if (!e.webhook) continue;
    hooks.checked++;
    const ok = input.deliveries.some((d) => d.request_id === e.request_id && d.valid && d.answered === "200");
    if (ok) continue;
    const record = docs
      .get(e.request_id)!
      .map((d) => d?.webhook)
      .find((w) => w !== undefined);
    if (record?.status === "failed" && record.error) continue;
    hooks.violations.push(
      `${e.request_id}: no delivery answered 200 (${input.deliveries.filter((d) => d.request_id === e.request_id).length} tries), ` +
        `job's record ${JSON.stringify(record ?? null)}`,
    );
  }

  // 5. No 5xx (or no answer) for a client's mistake; every valid request accepted or failed with a stated cause.
  const answers: InvariantResult = {
    name: "4xx for mistakes, retryable 5xx stated",
    checked: 0,
    violations: [],
  };
  for (const e of ledger) {
    answers.checked++;
    if (CLIENT_MISTAKES.includes(e.kind)) {
      // A worker that cannot look at a request yet (ComfyUI restarting, the worker starting or draining) says so
      // with a retryable state code, and one killed by a fault answers nothing; any other 5xx answered the mistake.
      const bad = e.attempts.find(
        (a) => a.http !== undefined && a.http >= 500 && !STATE_CODES.has(String(a.code)),
      );
      if (bad)
        answers.violations.push(`${e.request_id} (${e.kind}): answered ${bad.http} (${String(bad.code)})`);
      else if (e.http === undefined || e.http < 400 || e.http >= 500)
        answers.violations.push(`${e.request_id} (${e.kind}): answered ${String(e.http)}, not a 4xx`);
    } else if (!e.accepted) {
      const last = e.attempts[e.attempts.length - 1];
      if (last?.http === undefined || last.http < 500 || !last.code)
        answers.violations.push(
          `${e.request_id} (${e.kind}): not accepted, last answer ${String(last?.http ?? last?.error)} ${String(last?.code)}${e.note ? ` (${e.note})` : ""}`,
        );
    }
  }

  // 6. Memory: each worker's RSS at the end within the bound of its start.
  const memory: InvariantResult = {
    name: `RSS growth <= ${RSS_GROWTH_BOUND_BYTES / 2 ** 20} MiB per worker`,
    checked: 0,
    violations: [],
  };
  fleet.workers.forEach((w, i) => {
    memory.checked++;
    const [a, b] = [input.rss.start[i], input.rss.end[i]];
    if (a === undefined || b === undefined) memory.violations.push(`worker ${w.index + 1}: RSS unknown`);
    else if (b - a > RSS_GROWTH_BOUND_BYTES)
      memory.violations.push(
        `worker ${w.index + 1}: ${(a / 2 ** 20).toFixed(0)} -> ${(b / 2 ** 20).toFixed(0)} MiB`,
      );
  });

  // 7. Folders: no partial download or upload left in the input and output folders; the downloaded-input cache
  // within its file bound (the fleet sets it low, so that URL inputs make it evict). An eviction never removes a
  // file a running job holds, so the bound is INPUT_CACHE_MAX_FILES plus the jobs in flight at the last eviction.
  const folders: InvariantResult = {
    name: `no leftovers in input/output folders; input cache <= ${INPUT_CACHE_MAX_FILES} + in flight`,
    checked: 0,
    violations: [],
  };
  for (const w of fleet.workers) {
    for (const f of [...(await walk(w.inputDir)), ...(await walk(w.outputDir))]) {
      folders.checked++;
      if (f.endsWith(".part")) folders.violations.push(`worker ${w.index + 1}: ${f}`);
    }
    const cached = (await readdir(w.inputDir).catch(() => [] as string[])).filter((n) =>
      n.startsWith(CACHE_PREFIX),
    );
    if (cached.length > INPUT_CACHE_MAX_FILES + input.concurrency)
      folders.violations.push(
        `worker ${w.index + 1}: ${cached.length} cached inputs in ${w.inputDir}, above ` +
          `INPUT_CACHE_MAX_FILES=${INPUT_CACHE_MAX_FILES} + ${input.concurrency} in flight`,
      );
  }

  // 8. Every session the official client opened called its on_close_route once (closed, or expired when the close
  // did not reach its worker), unless its worker stopped while it was open (sessions live in the worker's memory).
  const sessions: InvariantResult = {
    name: "on_close called once per session",
    checked: 0,
    violations: [],
  };
  for (const e of ledger) {
    for (const s of e.sessions ?? []) {
      if (s.id === undefined) continue;
      sessions.checked++;
      const calls = input.closes.filter((c) => c.session_id === s.id);
      const where = `${e.request_id} session ${s.id} (worker ${s.worker === undefined ? "?" : s.worker + 1})`;
      if (calls.length > 1) sessions.violations.push(`${where}: on_close called ${calls.length} times`);
      else if (calls.length === 1 && calls[0]!.key !== e.request_id)
        sessions.violations.push(`${where}: on_close called for ${calls[0]!.key}`);
      else if (calls.length === 0) {
        const lastsUntil = s.ended + (2 * SESSION_LIFETIME_S + 10) * 1000;
        const stopped = input.faults.find(
          (f) =>
            (f.kind === "worker-kill" || f.kind === "worker-drain") &&
            s.worker !== undefined &&
            f.worker === s.worker + 1 &&
            input.t0 + f.at <= lastsUntil &&
            input.t0 + (f.ended ?? f.at) >= s.opened,
        );
        if (!stopped)
          sessions.violations.push(
            `${where}: no on_close call (${s.closed ? "closed" : `not closed: ${String(s.close_error)}`})`,
          );
      }
    }
  }
  return [terminal, once, stored, hooks, answers, memory, folders, sessions];
}
