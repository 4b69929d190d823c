/**
 * Hostile bodies on the routed port (the one open to the internet): what each costs the worker while it arrives.
 * For each attack, a fresh compiled worker (`node dist/worker/cli.js start`, signatures checked against the router
 * emulator's key) receives the attack's bodies, sent again and again for at least WINDOW_MS, while a client asks
 * its /health one request after another; the figures are those answers' latencies and the worker's heap and RSS
 * above what they were just before. The attacks (hostile-requests.ts) are those test/integration/security-http.test.ts
 * sends, checking the answers and that /health keeps answering; how fast it answers is measured here.
 *
 * Part of `npm run bench` (this section alone: BENCH_ONLY=hostile); `tsx benchmark/bench/hostile-bodies.ts` runs it
 * on parts of its own and prints the section (it runs dist/: `npm run build` first). BENCH_REPEATS (3)
 * repetitions, each on fresh workers.
 */
import { writeFile } from "node:fs/promises";
import { cpus, totalmem } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { loadConfig, type FrozenConfig } from "../../config/index.js";
import { RouterEmulator } from "../../scripts/router-emulator/emulator.js";
import { freePort } from "../../scripts/services/child.js";
import { repoRoot } from "../../scripts/services/paths.js";
import {
  deepArrays,
  emptyObjects,
  jsonHeaders,
  legacyNestedAuth,
  longSignedUrl,
  sendRaw,
} from "./hostile-requests.js";
import {
  procMb,
  reportingEnv,
  spawnCompiledWorker,
  startParts,
  workerEnv,
  type BenchParts,
} from "./parts.js";
import { fmt, median, quantile, spread } from "./stats.js";

const log = (s: string) => process.stderr.write(`[bench] ${s}\n`);
const repeats = Number(process.env.BENCH_REPEATS ?? 3);
/** How long each attack goes on (its bodies are sent again until this passed), and the idle row's length. */
const WINDOW_MS = 3_000;
/** What /health should answer within while an attack arrives (asked for when these defences were made). */
const TARGET_MS = 100;
const MB = 1024 * 1024;

type Limits = FrozenConfig["limits"];

interface Spawned {
  pid: number;
  /** The routed port's URL, as the worker advertises it (what signed requests name). */
  routed: string;
  api: string;
  stop(): Promise<void>;
}

/** A compiled worker on the bench's ComfyUI, signatures checked (UNSECURED=false) with `router`'s key. */
async function spawnWorker(
  parts: BenchParts,
  router: RouterEmulator,
  id: number,
  extra: Record<string, string>,
): Promise<Spawned> {
  const [port, apiPort] = [await freePort(), await freePort()];
  const w = await spawnCompiledWorker(
    workerEnv(parts, {
      WORKER_PORT: String(port),
      PUBLIC_IPADDR: "127.0.0.1",
      [`VAST_TCP_PORT_${port}`]: String(port),
      WORKER_HTTP_PORT: "0",
      API_PORT: String(apiPort),
      OUTPUT_DIR: join(parts.dir, `hostile-${id}`),
      UNSECURED: "false",
      ...reportingEnv(router.url, id),
      // As production logs: each refused request's line is part of what it costs.
      LOG_LEVEL: "info",
      ...extra,
    }),
  );
  try {
    const routed = `http://127.0.0.1:${port}`;
    await router.waitFor(() => router.workers.has(routed), 30_000);
    return { pid: w.pid, routed, api: `http://127.0.0.1:${apiPort}`, stop: w.stop };
  } catch (err) {
    await w.stop();
    throw err;
  }
}

/** The worker's V8 heap in use, MB, as its /metrics reports it (prom-client's default metrics). */
async function heapMb(api: string): Promise<number> {
  const text = (await sendRaw(api, "/metrics", { timeoutMs: 10_000 })).text;
  return Number(/^comfyui_worker_nodejs_heap_size_used_bytes (\d+)/m.exec(text)?.[1] ?? NaN) / MB;
}

interface Attack {
  name: string;
  /** Variables the worker needs for this attack. */
  env?: Record<string, string>;
  /** The bodies sent at once (none: the idle reference), made for this worker. */
  bodies(router: RouterEmulator, routed: string): Buffer[];
}

/** The attacks of test/integration/security-http.test.ts, after a reference row with none. */
const attacks = (limits: Limits): Attack[] => [
  { name: "none (reference)", bodies: () => [] },
  {
    name: `4 at once: \`[{},{},...]\` of ${fmt(limits.routedMaxBodyBytes / MB, 0)} MiB`,
    bodies: () => {
      const body = emptyObjects(limits.routedMaxBodyBytes);
      return [body, body, body, body];
    },
  },
  {
    name: `1: 100,000 \`[\` then 100,000 \`]\` (deeper than MAX_JSON_DEPTH=${limits.jsonShape.maxDepth})`,
    bodies: () => [deepArrays()],
  },
  {
    name: "2 at once: signed auth_data with a 15 MiB url",
    bodies: (router, routed) => {
      const body = longSignedUrl(router.authData(routed), routed);
      return [body, body];
    },
  },
  {
    name: "2 at once, SIGNATURE_LEGACY=true: auth_data.endpoint (or an unknown field) of 3,000 arrays 58 deep",
    env: { SIGNATURE_LEGACY: "true" },
    bodies: (router, routed) => legacyNestedAuth(router.authData(routed)),
  },
];

interface AttackRun {
  /** Statuses of the attack's answers, with how many of each. */
  statuses: Map<number, number>;
  healthMs: number[];
  /** /health answers other than 200. */
  healthNot200: number;
  heapGrowthMb: number;
  rssGrowthMb: number;
}

/**
 * One attack on a fresh worker: its bodies again and again (all of one round at once) for WINDOW_MS, /health asked
 * one request after another meanwhile. Heap is read from the worker's /metrics every 100 ms; RSS from /proc every
 * 20 ms and as the kernel's high-water mark (VmHWM, reset just before), which no pause of the worker can hide.
 */
async function runAttack(
  parts: BenchParts,
  router: RouterEmulator,
  attack: Attack,
  id: number,
): Promise<AttackRun> {
  const w = await spawnWorker(parts, router, id, attack.env ?? {});
  try {
    const bodies = attack.bodies(router, w.routed);
    // Settle: a few /health answers and one /metrics read, so that the first ones' costs are not the attack's.
    for (let i = 0; i < 20; i++) await sendRaw(w.routed, "/health", { timeoutMs: 30_000 });
    const heapBefore = await heapMb(w.api);
    const rssBefore = await procMb(w.pid, "VmRSS");
    await writeFile(`/proc/${w.pid}/clear_refs`, "5");
    let heapPeak = heapBefore;
    let rssPeak = rssBefore;
    const rssTimer = setInterval(() => {
      void procMb(w.pid, "VmRSS").then(
        (mb) => (rssPeak = Math.max(rssPeak, mb)),
        () => undefined,
      );
    }, 20);
    let heapReading = false;
    const heapTimer = setInterval(() => {
      if (heapReading) return;
      heapReading = true;
      void heapMb(w.api)
        .then(
          (mb) => (heapPeak = Math.max(heapPeak, mb)),
          () => undefined,
        )
        .finally(() => (heapReading = false));
    }, 100);

    try {
      let done = false;
      const statuses = new Map<number, number>();
      const attacking = (async () => {
        const started = performance.now();
        do {
          if (bodies.length === 0) await new Promise((r) => setTimeout(r, WINDOW_MS));
          const answers = await Promise.all(
            bodies.map((body) =>
              sendRaw(w.routed, "/generate", {
                method: "POST",
                headers: jsonHeaders(body),
                body,
                timeoutMs: 120_000,
              }),
            ),
          );
          for (const a of answers) statuses.set(a.status, (statuses.get(a.status) ?? 0) + 1);
        } while (performance.now() - started < WINDOW_MS);
      })().finally(() => (done = true));
      const healthMs: number[] = [];
      let healthNot200 = 0;
      while (!done) {
        const t0 = performance.now();
        const { status } = await sendRaw(w.routed, "/health", { timeoutMs: 60_000 });
        healthMs.push(performance.now() - t0);
        if (status !== 200) healthNot200++;
      }
      await attacking;
      rssPeak = Math.max(rssPeak, await procMb(w.pid, "VmHWM"));
      heapPeak = Math.max(heapPeak, await heapMb(w.api));
      return {
        statuses,
        healthMs,
        healthNot200,
        heapGrowthMb: heapPeak - heapBefore,
        rssGrowthMb: rssPeak - rssBefore,
      };
    } finally {
      clearInterval(rssTimer);
      clearInterval(heapTimer);
    }
  } finally {
    await w.stop();
  }
}

export async function hostileBodiesSection(parts: BenchParts): Promise<string> {
  // The limits the worker runs with (its defaults), read from its config rather than written out again.
  const limits = loadConfig(workerEnv(parts), repoRoot).limits;
  const list = attacks(limits);
  const router = new RouterEmulator({ port: 0 });
  await router.listen();
  const runs = new Map<Attack, AttackRun[]>(list.map((a) => [a, []]));
  try {
    for (let i = 0; i < repeats; i++) {
      for (const [j, attack] of list.entries()) {
        log(`hostile bodies ${i + 1}/${repeats}: ${attack.name}`);
        const run = await runAttack(parts, router, attack, 500 + i * list.length + j);
        runs.get(attack)!.push(run);
        log(
          `  answers ${JSON.stringify([...run.statuses])}, ${run.healthMs.length} /health, max ${fmt(Math.max(...run.healthMs))} ms, heap +${fmt(run.heapGrowthMb)} MB, RSS +${fmt(run.rssGrowthMb)} MB`,
        );
      }
    }
  } finally {
    await router.close();
  }
  const slowest = (attack: Attack) => Math.max(...runs.get(attack)!.flatMap((r) => r.healthMs));
  const over = list.filter((a) => slowest(a) > TARGET_MS);
  const rows = list.map((attack) => {
    const rs = runs.get(attack)!;
    const ms = rs.flatMap((r) => r.healthMs);
    const statuses = new Map<number, number>();
    for (const r of rs) for (const [s, n] of r.statuses) statuses.set(s, (statuses.get(s) ?? 0) + n);
    const answers =
      statuses.size === 0
        ? "–"
        : [...statuses]
            .sort(([a], [b]) => a - b)
            .map(([s, n]) => `${s} ×${n}`)
            .join(", ");
    const not200 = rs.reduce((n, r) => n + r.healthNot200, 0);
    const heap = rs.map((r) => r.heapGrowthMb);
    const rss = rs.map((r) => r.rssGrowthMb);
    return `| ${attack.name} | ${answers} | ${ms.length}${not200 > 0 ? ` (${not200} not 200)` : ""} | ${fmt(median(ms), 1)} | ${fmt(quantile(ms, 0.99), 1)} | ${fmt(Math.max(...ms), 1)} | ${fmt(median(heap))} | ${spread(heap)} | ${fmt(median(rss))} | ${spread(rss)} |`;
  });
  return `## Hostile bodies on the routed port

Written by \`npm run bench\` (this section alone: \`BENCH_ONLY=hostile\`) on ${new Date().toISOString().slice(0, 10)}: ${cpus().length} × ${cpus()[0]?.model ?? "unknown CPU"}, ${fmt(totalmem() / 2 ** 30, 0)} GiB, Node ${process.version}; ${repeats} repetitions, each attack on a fresh worker. Latencies are over all /health answers of all repetitions; growth is the median, spread min–max.

| attack (bodies sent at once, again for ${fmt(WINDOW_MS / 1000, 0)} s) | answers | /health answers | /health p50 ms | p99 ms | max ms | heap growth MB | spread | RSS growth MB | spread |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
${rows.join("\n")}

Target: /health answers within ${TARGET_MS} ms while any of these arrives (its answers and that /health keeps
answering are checked by test/integration/security-http.test.ts; how fast, here). Slowest answer above it:
${over.length === 0 ? "none" : over.map((a) => `${a.name} (${fmt(slowest(a), 1)} ms)`).join("; ")}.

Method: for each attack a fresh compiled worker (\`node dist/worker/cli.js start\`, \`UNSECURED=false\` with the
router emulator's key, \`LOG_LEVEL=info\` as in production, default limits: \`ROUTED_MAX_BODY_BYTES=${limits.routedMaxBodyBytes}\`,
\`MAX_JSON_VALUES=${limits.jsonShape.maxValues}\`, \`MAX_JSON_DEPTH=${limits.jsonShape.maxDepth}\`) gets 20 /health requests to settle, then the
attack's bodies are POSTed to its routed port's \`/generate\` all at once, each on its own connection, and again
as soon as all were answered, until ${fmt(WINDOW_MS / 1000, 0)} s passed (the reference row sends nothing for as long). Meanwhile
the bench process (a separate process: the client's own work is not the worker's) asks the routed port's
\`/health\` one request after another, each on a new connection, and times it from send to the end of its
answer. Heap is the worker's \`nodejs_heap_size_used_bytes\` from its \`/metrics\` (local API port), read just
before and every 100 ms during the attack (a read waits for the worker's event loop, so a blocked loop hides
its peak); RSS is read from /proc every 20 ms and as the kernel's high-water mark (\`VmHWM\`, reset through
\`clear_refs\` just before), which nothing the worker does can hide. Growth = peak − the figure just before;
the reference row's is what the /health requests and /metrics reads leave behind until a collection, so a row
that slows /health down (fewer requests) can show less than it.
The 16 MiB bodies are refused by the byte scanner after their first ${limits.jsonShape.maxValues} values (413) and the rest is read off
and discarded, so each round still moves 64 MiB; the deep one is refused at depth ${limits.jsonShape.maxDepth + 1} (400); the signed
ones are parsed (they are within the limits) and refused by the signature check (401) without rendering or
verifying the long or nested fields.
`;
}

async function main(): Promise<void> {
  log("starting ComfyUI and S3");
  const parts = await startParts();
  try {
    process.stdout.write(await hostileBodiesSection(parts));
  } finally {
    await parts.stop();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) await main();
