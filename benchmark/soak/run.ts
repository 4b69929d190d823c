import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { check, readRss, type InvariantResult } from "./check.js";
import { inject, planFaults, type FaultRecord } from "./faults.js";
import { startFleet } from "./fleet.js";
import { InputServer } from "./inputs.js";
import { KINDS, SESSION_LIFETIME_S, Traffic, type LedgerEntry } from "./traffic.js";
import { VastCaller } from "./vast-caller.js";
import { WebhookReceiver } from "./webhooks.js";

/** How long after S3 is back a worker fault waits (the workers' final documents are tried again meanwhile). */
const S3_SETTLE_MS = 40_000;

export interface SoakOptions {
  minutes: number;
  seed: number;
  /** Requests in flight at once. */
  concurrency: number;
  /** Where the fleet's folders, logs and the ledger go (a new temporary folder when undefined). */
  dir?: string;
  log?: (line: string) => void;
}

export interface SoakReport {
  dir: string;
  ledger: LedgerEntry[];
  faults: FaultRecord[];
  invariants: InvariantResult[];
  violations: number;
  rss: { start: (number | undefined)[]; end: (number | undefined)[] };
  table: string;
}

/**
 * The soak: a two-worker fleet under seeded traffic while seeded faults happen, then a quiet period, then the
 * checker. Resolves with the report (its `violations` count is what the CLI's exit status says).
 */
export async function runSoak(opts: SoakOptions): Promise<SoakReport> {
  const log = opts.log ?? ((l: string) => process.stdout.write(`[soak] ${l}\n`));
  const dir = opts.dir ?? (await mkdtemp(join(tmpdir(), "soak-")));
  log(`folder ${dir}; starting S3, the router emulator and 2 workers (each starts its ComfyUI)...`);
  const fleet = await startFleet({ dir, workers: 2, log });
  const receiver = await new WebhookReceiver().start();
  const inputs = await new InputServer().start();
  const vast = await new VastCaller({
    autoscalerUrl: fleet.routerUrl,
    apiKey: "soak",
    logFile: join(dir, "logs", "vast-client.log"),
  })
    .start()
    .catch(async (err: unknown) => {
      await Promise.all([inputs.stop(), receiver.stop(), fleet.stop()]);
      throw err;
    });
  const traffic = new Traffic({ fleet, receiver, vast, inputs, seed: opts.seed, log });
  const faults: FaultRecord[] = [];
  const rss = {
    start: await Promise.all(fleet.workers.map((w) => readRss(w.api))),
    end: [] as (number | undefined)[],
  };
  try {
    const durationMs = opts.minutes * 60_000;
    const t0 = Date.now();
    const until = t0 + durationMs;
    log(`traffic for ${opts.minutes} min, seed ${opts.seed}, ${opts.concurrency} in flight`);
    const plan = planFaults(opts.seed, durationMs, fleet.workers.length);
    const faultRun = (async () => {
      let s3Back = 0;
      for (const f of plan) {
        // A worker that stops loses what it has not written yet: after an S3 outage its jobs' documents are still
        // being tried again (backoff up to 30 s), so a worker fault waits for them. Stopping a worker before that is
        // a double fault the worker cannot survive (its jobs of the outage exist only in its memory).
        const settled = f.kind === "worker-kill" || f.kind === "worker-drain" ? s3Back + S3_SETTLE_MS : 0;
        const wait = Math.max(t0 + f.at, settled) - Date.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        const rec = await inject(f, { fleet, receiver, t0, log });
        faults.push(rec);
        if (f.kind === "s3-outage") s3Back = Date.now();
        // A restarted worker's memory starts again.
        if (f.kind === "worker-drain" || f.kind === "worker-kill")
          rss.start[f.worker] = await readRss(fleet.workers[f.worker]!.api);
      }
    })();
    let seq = 0;
    let done = 0;
    const lanes = Array.from({ length: opts.concurrency }, async () => {
      while (Date.now() < until) {
        const e = await traffic.one(seq++);
        if (++done % 25 === 0) log(`${done} requests (${((Date.now() - t0) / 1000).toFixed(0)} s)`);
        void e;
      }
    });
    await Promise.all(lanes);
    await faultRun;
    log(`traffic done: ${traffic.ledger.length} requests; quiet period (webhook retries, janitor)...`);
    await quiet(
      traffic.ledger,
      receiver,
      fleet.workers.map((w) => w.api),
    );
    rss.end = await Promise.all(fleet.workers.map((w) => readRss(w.api)));
    const invariants = await check({
      fleet,
      ledger: traffic.ledger,
      deliveries: receiver.deliveries,
      closes: receiver.closes,
      faults,
      t0,
      concurrency: opts.concurrency,
      rss,
    });
    const violations = invariants.reduce((n, i) => n + i.violations.length, 0);
    const report: SoakReport = {
      dir,
      ledger: traffic.ledger,
      faults,
      invariants,
      violations,
      rss,
      table: "",
    };
    report.table = renderTable(report, receiver.closes.length);
    await writeFile(
      join(dir, "ledger.json"),
      JSON.stringify(
        {
          seed: opts.seed,
          minutes: opts.minutes,
          ledger: traffic.ledger,
          faults,
          deliveries: receiver.deliveries,
          closes: receiver.closes,
          invariants,
          rss,
        },
        null,
        1,
      ),
    );
    return report;
  } finally {
    await vast.stop();
    await inputs.stop();
    await receiver.stop();
    await fleet.stop();
  }
}

/**
 * Waits (up to 60 s) until every webhook job's deliveries settled: the receiver answered 200, or the job's record
 * on a worker says failed. Then a few seconds more, for the last heartbeats and document writes.
 */
async function quiet(ledger: LedgerEntry[], receiver: WebhookReceiver, apis: string[]): Promise<void> {
  const deadline = Date.now() + 60_000;
  const pending = ledger.filter((e) => e.webhook && e.accepted);
  while (Date.now() < deadline && pending.length > 0) {
    for (let i = pending.length - 1; i >= 0; i--) {
      const e = pending[i]!;
      if (receiver.deliveries.some((d) => d.request_id === e.request_id && d.answered === "200")) {
        pending.splice(i, 1);
        continue;
      }
      for (const api of apis) {
        const doc = (await fetch(`${api}/result/${e.request_id}`, { signal: AbortSignal.timeout(5_000) })
          .then((r) => r.json())
          .catch(() => undefined)) as { webhook?: { status?: string } } | undefined;
        if (doc?.webhook?.status === "failed") {
          pending.splice(i, 1);
          break;
        }
      }
    }
    if (pending.length > 0) await new Promise((r) => setTimeout(r, 1_000));
  }
  // A session the client could not close expires (its lifetime, extended once by its request, plus the 5 s sweep);
  // a session whose worker stopped never calls back (the checker knows which): wait up to that bound for the rest.
  const sessions = ledger.flatMap((e) => e.sessions ?? []).filter((s) => s.id !== undefined);
  const bound = Math.max(0, ...sessions.map((s) => s.ended)) + (2 * SESSION_LIFETIME_S + 15) * 1000;
  while (Date.now() < bound && sessions.some((s) => !receiver.closes.some((c) => c.session_id === s.id)))
    await new Promise((r) => setTimeout(r, 1_000));
  await new Promise((r) => setTimeout(r, 3_000));
}

function renderTable(r: SoakReport, closeCalls: number): string {
  const rows: string[] = [];
  const mib = (b: number | undefined) => (b === undefined ? "?" : `${(b / 2 ** 20).toFixed(0)} MiB`);
  rows.push(
    "| requests by kind | sent | accepted | completed | failed | cancelled | 4xx | sent again (same id) |",
  );
  rows.push("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
  const kinds = [...Object.keys(KINDS), "all"];
  for (const k of kinds) {
    const es = r.ledger.filter((e) => k === "all" || e.kind === k);
    if (es.length === 0) continue;
    const count = (s: string) => es.filter((e) => e.status === s).length;
    rows.push(
      `| ${k} | ${es.length} | ${es.filter((e) => e.accepted).length} | ${count("completed")} | ${count("failed")} | ` +
        `${count("cancelled")} | ${es.filter((e) => e.http !== undefined && e.http >= 400 && e.http < 500).length} | ` +
        `${es.filter((e) => e.attempts.length > 1 || (e.resubmits ?? 0) > 0).length} |`,
    );
  }
  rows.push("", "| fault | times | at (s, from the traffic's start) |", "| --- | ---: | --- |");
  const byKind = new Map<string, FaultRecord[]>();
  for (const f of r.faults) byKind.set(f.kind, [...(byKind.get(f.kind) ?? []), f]);
  for (const [k, fs] of byKind)
    rows.push(
      `| ${k} | ${fs.length} | ${fs.map((f) => `${(f.at / 1000).toFixed(0)}${f.error ? " (error)" : ""}`).join(", ")} |`,
    );
  const sessions = r.ledger.flatMap((e) => e.sessions ?? []).filter((s) => s.id !== undefined);
  rows.push(
    "",
    "| sessions (official client) | opened | closed by the client | on_close calls |",
    "| --- | ---: | ---: | ---: |",
    `| with on_close_route | ${sessions.length} | ${sessions.filter((s) => s.closed).length} | ${closeCalls} |`,
  );
  rows.push("", "| invariant | checked | violations |", "| --- | ---: | ---: |");
  for (const i of r.invariants) rows.push(`| ${i.name} | ${i.checked} | ${i.violations.length} |`);
  rows.push("", "| worker | RSS at start | RSS at end |", "| --- | ---: | ---: |");
  r.rss.start.forEach((s, i) => rows.push(`| ${i + 1} | ${mib(s)} | ${mib(r.rss.end[i])} |`));
  const named = r.invariants.flatMap((i) => i.violations.map((v) => `- ${i.name}: ${v}`));
  if (named.length > 0) rows.push("", "Violations:", ...named);
  return rows.join("\n");
}
