import { EventEmitter } from "node:events";
import type { Response } from "express";
import { asVerified, newLoad, RequestTracker } from "../../worker/reporter/tracker.js";

/** The part of an HTTP response the tracker watches: its close, whether it finished, its status. */
function response(): EventEmitter & { writableFinished: boolean; statusCode: number } {
  return Object.assign(new EventEmitter(), { writableFinished: false, statusCode: 200 });
}
const finish = (res: ReturnType<typeof response>, status = 200) => {
  res.statusCode = status;
  res.writableFinished = true;
  res.emit("close");
};
const auth = (idx: number) => asVerified({ request_idx: idx, reqnum: idx, cost: 100 });

test("new_load nets cancellations against the arrivals of the same interval, floored at 0 (as upstream)", () => {
  const t = new RequestTracker(() => 1);
  const gone = response();
  t.track(auth(1), 100, gone as unknown as Response);
  t.commit({ ...t.counters });
  gone.emit("close"); // the client left before the answer
  expect(newLoad(t.counters)).toBe(0);
  const next = response();
  t.track(auth(2), 100, next as unknown as Response);
  expect(newLoad(t.counters)).toBe(0);
  t.commit({ ...t.counters });
  expect(t.finished.map((f) => f.status)).toEqual(["Cancelled"]);
});

test("a session is in flight at its cost until closed, then a success; requests inside it only count load", () => {
  const t = new RequestTracker(() => 5);
  const key = t.openSession(auth(7), 100);
  expect(t.workingRequestIdxs()).toEqual([7]);
  expect(t.sessionWorkload([key])).toBe(100);
  const inside = response();
  t.track(auth(8), 100, inside as unknown as Response, true);
  expect(t.workingRequestIdxs()).toEqual([7]);
  finish(inside);
  expect(t.finished).toEqual([]);
  t.closeSession(key);
  t.closeSession(key);
  expect(t.workingRequestIdxs()).toEqual([]);
  expect(t.finished).toEqual([
    {
      request_idx: 7,
      success: true,
      status: "Success",
      entered_queue_at: 5,
      work_started_at: 5,
      work_completed_at: 5,
    },
  ]);
  expect(t.counters).toMatchObject({ received: 200, cur_perf: 200, cancelled: 0 });
  expect(t.numReceived).toBe(1);
});

test("a rejected request counts as received, with the time it arrived; inside a session only its load", () => {
  const t = new RequestTracker(() => 9);
  t.rejected(auth(4), 100, true);
  expect(t.numReceived).toBe(0);
  expect(t.finished).toEqual([]);
  t.rejected(auth(3), 100);
  expect(t.numReceived).toBe(1);
  expect(t.counters.rej_load).toBe(200);
  expect(t.finished[0]).toMatchObject({ status: "Rejected", success: false, entered_queue_at: 9 });
});

test("finished requests waiting for /delete_requests/ are capped: the oldest go first, and are counted", () => {
  const tracker = new RequestTracker(() => 1, 3);
  for (let i = 1; i <= 5; i++) tracker.rejected(auth(i), 1);
  expect(tracker.takeFinished().map((f) => f.request_idx)).toEqual([3, 4, 5]);
  expect(tracker.droppedFinished).toBe(2);
  tracker.dropFinished(tracker.takeFinished());
  expect(tracker.takeFinished()).toEqual([]);
});
