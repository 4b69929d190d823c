import { signatureHeaders } from "../../handlers/webhook.js";
import { FAULT_KINDS, WORKER_FAULTS, planFaults } from "../../benchmark/soak/faults.js";
import { prng } from "../../benchmark/soak/traffic.js";
import { WebhookReceiver } from "../../benchmark/soak/webhooks.js";

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
