import type { Fleet } from "./fleet.js";
import { prng } from "./traffic.js";
import type { WebhookReceiver } from "./webhooks.js";

export const FAULT_KINDS = [
  "comfyui-kill",
  "webhook-500",
  "webhook-close",
  "worker-drain",
  "worker-kill",
  "router-restart",
  "s3-outage",
] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];
/** The faults that hit one worker (the others hit what every worker shares). */
export const WORKER_FAULTS: readonly FaultKind[] = ["comfyui-kill", "worker-drain", "worker-kill"];

export interface FaultRecord {
  kind: FaultKind;
  /** ms since the soak's traffic started. */
  at: number;
  worker?: number;
  detail: string;
  ended?: number;
  error?: string;
}

export interface PlannedFault {
  kind: FaultKind;
  at: number;
  worker: number;
  /** How long a window fault (webhook-500/-close) lasts. */
  forMs: number;
}

/**
 * The faults of a run, from the seed: every kind once per round, rounds spread over the traffic's duration
 * (`durationMs`), each at a seeded time within its slot; the faults of one worker alternate between workers.
 */
export function planFaults(seed: number, durationMs: number, workers: number): PlannedFault[] {
  const rand = prng(seed ^ 0x5eed);
  // About one fault every 20 s, at least one of each kind.
  const count = Math.max(FAULT_KINDS.length, Math.floor(durationMs / 20_000));
  const slot = durationMs / (count + 1);
  const plan: PlannedFault[] = [];
  const order = [...FAULT_KINDS].sort(() => rand() - 0.5);
  // The faults aimed at one worker take turns, from a seeded first one, so that each worker meets them.
  let first: number | undefined;
  let turn = 0;
  for (let i = 0; i < count; i++) {
    const kind = order[i % order.length]!;
    const at = Math.round(slot * (i + 0.5) + rand() * slot * 0.5);
    first ??= Math.floor(rand() * workers);
    const worker = WORKER_FAULTS.includes(kind) ? (first + turn++) % workers : first;
    plan.push({ kind, at, worker, forMs: 5_000 + Math.round(rand() * 10_000) });
  }
  return plan;
}

/** Runs one planned fault against the fleet and records it; resolves once the fault is over (the fleet healed). */
export async function inject(
  f: PlannedFault,
  deps: { fleet: Fleet; receiver: WebhookReceiver; t0: number; log: (l: string) => void },
): Promise<FaultRecord> {
  const onWorker = WORKER_FAULTS.includes(f.kind);
  const rec: FaultRecord = {
    kind: f.kind,
    at: Date.now() - deps.t0,
    ...(onWorker && { worker: f.worker + 1 }),
    detail: "",
  };
  const w = deps.fleet.workers[f.worker]!;
  try {
    switch (f.kind) {
      case "comfyui-kill": {
        const pid = (await w.comfyPids()).pop();
        if (pid === undefined) throw new Error("no ComfyUI pid in the worker's log");
        process.kill(pid, "SIGKILL");
        rec.detail = `SIGKILL ComfyUI pid ${pid} (the launcher restarts it)`;
        break;
      }
      case "webhook-500":
      case "webhook-close":
        deps.receiver.mode = f.kind === "webhook-500" ? "500" : "close";
        rec.detail = `receiver ${deps.receiver.mode} for ${f.forMs} ms`;
        deps.log(`fault ${f.kind}: ${rec.detail}`);
        await new Promise((r) => setTimeout(r, f.forMs));
        deps.receiver.mode = "ok";
        break;
      case "worker-drain": {
        const started = Date.now();
        await w.stop("SIGTERM", 60_000);
        const drained = Date.now() - started;
        await w.start();
        rec.detail = `SIGTERM (drained and exited in ${drained} ms), started again, ready after ${Date.now() - started} ms`;
        break;
      }
      case "worker-kill": {
        // Whatever it runs dies with it (its ComfyUI too: the launcher binds it to its parent's death); readers see
        // those jobs fail with owner_lost once their heartbeat lapses.
        const started = Date.now();
        await w.stop("SIGKILL");
        await w.start();
        rec.detail = `SIGKILL, started again, ready after ${Date.now() - started} ms`;
        break;
      }
      case "s3-outage": {
        // Tens of seconds without the bucket: uploads, job documents and cross-worker reads fail meanwhile.
        const ms = f.forMs * 2;
        await deps.fleet.s3Path.down();
        await new Promise((r) => setTimeout(r, ms));
        await deps.fleet.s3Path.up();
        rec.detail = `S3 unreachable for ${ms} ms (connections refused, open ones dropped)`;
        break;
      }
      case "router-restart": {
        // The same router (its key and what it knows survive, as Vast's do), unreachable for a while.
        await deps.fleet.router.close();
        await new Promise((r) => setTimeout(r, f.forMs));
        await deps.fleet.router.listen();
        rec.detail = `router down for ${f.forMs} ms`;
        break;
      }
    }
  } catch (err) {
    rec.error = err instanceof Error ? err.message : String(err);
  }
  rec.ended = Date.now() - deps.t0;
  deps.log(
    `fault ${f.kind}${onWorker ? ` on worker ${f.worker + 1}` : ""} at ${(rec.at / 1000).toFixed(1)} s: ${rec.detail}${rec.error ? ` ERROR ${rec.error}` : ""}`,
  );
  return rec;
}
