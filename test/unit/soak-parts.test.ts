import { signatureHeaders } from "../../handlers/webhook.js";
import { FAULT_KINDS, WORKER_FAULTS, planFaults } from "../../benchmark/soak/faults.js";
import { prng } from "../../benchmark/soak/traffic.js";
import { WebhookReceiver } from "../../benchmark/soak/webhooks.js";
import { SOAK_HEADING, soakSection } from "../../benchmark/soak/report.js";
import { sectionOf, withSection } from "../../benchmark/bench/sections.js";

// The soak's own parts (benchmark/soak/): a run is reproducible from its seed, and its receiver checks exactly the
// signature the worker sends.

test("the same seed plans the same faults; every kind at least once, inside the traffic's duration", () => {
  const plan = planFaults(7, 90_000, 2);
  expect(planFaults(7, 90_000, 2)).toEqual(plan);
  expect(planFaults(8, 90_000, 2)).not.toEqual(plan);
  expect(new Set(plan.map((f) => f.kind))).toEqual(new Set(FAULT_KINDS));
  for (const f of plan) {
    expect(f.at).toBeGreaterThanOrEqual(0);
    expect(f.at).toBeLessThan(90_000);
    expect([0, 1]).toContain(f.worker);
  }
  // The faults aimed at one worker take turns between the two.
  const turns = plan.filter((f) => WORKER_FAULTS.includes(f.kind)).map((f) => f.worker);
  expect(turns).toEqual(turns.map((_, i) => (turns[0]! + i) % 2));
  // A longer run has more faults: one about every 20 s.
  expect(planFaults(7, 600_000, 2).length).toBe(30);
});

test("the PRNG is a function of its seed", () => {
  const a = prng(42);
  const b = prng(42);
  const xs = Array.from({ length: 5 }, () => a());
  expect(Array.from({ length: 5 }, () => b())).toEqual(xs);
  for (const x of xs) expect(x >= 0 && x < 1).toBe(true);
});

test("the receiver accepts the worker's Standard Webhooks signature, and nothing altered", () => {
  const receiver = new WebhookReceiver();
  const body = JSON.stringify({ id: "soak-1-1", status: "completed" });
  const headers = signatureHeaders("msg_1", 1_700_000_000, body, { secret: receiver.secret });
  expect(receiver.verify(headers, body)).toBe(true);
  expect(receiver.verify(headers, body.replace("completed", "failed"))).toBe(false);
  expect(receiver.verify({ ...headers, "webhook-timestamp": "1700000001" }, body)).toBe(false);
  const other = signatureHeaders("msg_1", 1_700_000_000, body, { secret: "whsec_b3RoZXI=" });
  expect(receiver.verify(other, body)).toBe(false);
  expect(receiver.verify({}, body)).toBe(false);
});

test("the soak's section of BENCHMARKS.md replaces only itself, and is appended when missing", () => {
  const doc = "# Benchmarks\n\nintro\n\n## Load signal\n\nold signal\n\n## Cold start\n\ncold\n";
  const soak = `${SOAK_HEADING}\n\nfirst\n`;
  const added = withSection(doc, soak);
  expect(added).toBe(`${doc}\n${soak}`);
  expect(sectionOf(added, SOAK_HEADING)).toBe(soak);
  const replaced = withSection(added, `${SOAK_HEADING}\n\nsecond\n`);
  expect(replaced).toBe(`${doc}\n${SOAK_HEADING}\n\nsecond\n`);
  // A section in the middle: the ones after it stay.
  const middle = withSection(doc, "## Load signal\n\nnew signal\n\n");
  expect(middle).toBe("# Benchmarks\n\nintro\n\n## Load signal\n\nnew signal\n\n## Cold start\n\ncold\n");
  // However the new section ends, one blank line parts it from the next heading.
  expect(withSection(doc, "## Load signal\n\nnew signal\n")).toBe(middle);
  expect(sectionOf(doc, "## Cold start")).toBe("## Cold start\n\ncold\n");
  expect(sectionOf(doc, SOAK_HEADING)).toBeUndefined();
});

test("the receiver keeps sessions' on_close calls apart from webhook deliveries", async () => {
  const receiver = await new WebhookReceiver().start();
  try {
    const res = await fetch(receiver.closeUrl("soak-1-9"), {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ soak: "soak-1-9", session_id: "abc" }),
    });
    expect(res.status).toBe(200);
    expect(receiver.closes).toEqual([
      expect.objectContaining({ key: "soak-1-9", session_id: "abc", answered: "200" }),
    ]);
    expect(receiver.deliveries).toEqual([]);
  } finally {
    await receiver.stop();
  }
});

test("the soak's section names how to reproduce it, the run's facts and its tables", () => {
  const report = {
    dir: "/tmp/x",
    ledger: [],
    faults: [],
    invariants: [],
    violations: 0,
    rss: { start: [], end: [] },
    table: "| requests by kind | sent |\n| --- | ---: |\n| all | 9 |",
  };
  const code = { head: "abc1234", dirty: false };
  const section = soakSection(report, { minutes: 60, seed: 3, concurrency: 3, seconds: 3900, code });
  expect(section.startsWith(`${SOAK_HEADING}\n\n`)).toBe(true);
  expect(section).toContain(", code at `abc1234`: ");
  expect(section).toContain("`npm run soak -- --minutes 60 --seed 3 --benchmarks`");
  expect(section).toContain(
    "60 min of traffic,\nseed 3, 3 requests in flight, 3900 s in all. **0 violation(s).**",
  );
  expect(section).toContain(`${report.table}\n`);
  expect(section.endsWith("\n")).toBe(true);
  const short = soakSection(report, {
    minutes: 1.5,
    seed: 1,
    concurrency: 4,
    seconds: 1,
    code: { head: "abc1234", dirty: true },
  });
  expect(short).toContain("`npm run soak -- --minutes 1.5 --seed 1 --concurrency 4 --benchmarks`");
  expect(short).toContain(", code at `abc1234` with uncommitted changes: ");
});
