import { writeFile } from "node:fs/promises";
import { RouterEmulator } from "../../scripts/router-emulator/emulator.js";
import { stack } from "../harness/stack.js";
import { startTestWorker, type TestWorker } from "../harness/worker.js";
import { explain } from "./deliberate.js";
import { startReferenceWorker, type ReferenceWorker } from "./reference.js";
import { runScenario, ScenarioRun, type Observations } from "./scenario.js";

/**
 * Differential conformance: upstream's worker library (PyPI vastai 1.9.1, test/conformance/reference_worker.py)
 * and our worker get the same signed traffic and report to the same recording autoscaler; what each answered and
 * reported is compared field by field. A difference fails the test unless deliberate.ts lists it.
 */

const MAX_QUEUE_TIME_S = 30;
let router: RouterEmulator;
let wrapper: TestWorker | undefined;
let reference: ReferenceWorker | undefined;
let ours: TestWorker | undefined;

beforeAll(async () => {
  // The key framed as PKCS#1: the reference library imports it, so must we.
  router = new RouterEmulator({ port: 0, recordOnly: true, pubkeyFormat: "pkcs1" });
  await router.listen();
}, 30_000);

afterAll(async () => {
  await reference?.stop();
  await ours?.stop();
  await wrapper?.stop();
  await router?.close();
  if (reference) process.stderr.write(`[conformance] reference worker log: ${reference.logFile}\n`);
});

function table(ref: Observations, our: Observations): { text: string; unlisted: string[] } {
  const keys = [...new Set([...ref.keys(), ...our.keys()])];
  const rows: string[][] = [["observation", "reference (vastai 1.9.1)", "ours", "verdict"]];
  const unlisted: string[] = [];
  for (const k of keys) {
    const a = ref.get(k) ?? "(none)";
    const b = our.get(k) ?? "(none)";
    let verdict = "same";
    if (a !== b) {
      const d = explain(k, a, b);
      verdict = d ? `deliberate: ${d.id}` : "DIFFERENT";
      if (!d) unlisted.push(`${k}: reference ${a} / ours ${b}`);
    }
    rows.push([k, a, b, verdict]);
  }
  const cell = (s: string, w: number) => (s.length > w ? `${s.slice(0, w - 1)}…` : s.padEnd(w));
  const widths = [48, 44, 44, 30];
  const text = rows.map((r) => r.map((c, i) => cell(c, widths[i]!)).join(" | ")).join("\n");
  return { text, unlisted };
}

test("the reference worker library and ours answer and report the same scripted traffic alike", async () => {
  const s = stack();
  // The wrapper role behind the reference (as upstream's template runs PyWorker in front of its API wrapper):
  // our local API, unsecured and reporting to nobody, on the same ComfyUI.
  wrapper = await startTestWorker({ COMFYUI_HISTORY_POLL_MS: "100" });
  reference = await startReferenceWorker({
    tmpRoot: s.tmpRoot,
    modelServerUrl: wrapper.api,
    reportAddr: router.url,
    containerId: 101,
    masterToken: "conformance-token",
    maxPerf: 1,
    maxQueueTimeS: MAX_QUEUE_TIME_S,
  });
  const refRun = new ScenarioRun(router, {
    name: "reference",
    id: 101,
    base: reference.base,
    plainHttp: reference.plainHttp,
  });
  await Promise.race([runScenario(refRun), reference.failed]);
  await reference.stop();

  const port = await (await import("../../scripts/services/child.js")).freePort();
  ours = await startTestWorker({
    UNSECURED: "false",
    REPORT_ADDR: router.url,
    CONTAINER_ID: "102",
    MASTER_TOKEN: "conformance-token",
    PUBLIC_IPADDR: "127.0.0.1",
    WORKER_PORT: String(port),
    [`VAST_TCP_PORT_${port}`]: String(port),
    MAX_QUEUE_TIME: String(MAX_QUEUE_TIME_S),
    // Both keep the score they start with (1, as the reference's benchmark file says): the score that follows
    // real work would otherwise make ours admit the overload burst that the reference refuses.
    LIVE_SCORE: "false",
    REPORT_INTERVAL_MS: "1000",
    REPORT_HEARTBEAT_MS: "10000",
    COMFYUI_HISTORY_POLL_MS: "100",
  });
  const ourRun = new ScenarioRun(router, {
    name: "ours",
    id: 102,
    base: ours.routed,
    plainHttp: ours.worker.plainHttpUrl()!,
  });
  await runScenario(ourRun);

  // For a failure's post-mortem: every report as the autoscaler received it.
  if (process.env.CONFORMANCE_DUMP)
    await writeFile(process.env.CONFORMANCE_DUMP, JSON.stringify(router.reports, null, 1));
  const { text, unlisted } = table(refRun.obs, ourRun.obs);
  process.stdout.write(`\nConformance against vastai 1.9.1's worker library\n${text}\n\n`);
  expect(router.problems).toEqual([]);
  expect(unlisted).toEqual([]);
}, 240_000);
