import { RequestTracker } from "../../worker/reporter/tracker.js";

test("finished requests waiting for /delete_requests/ are capped: the oldest go first, and are counted", () => {
  const tracker = new RequestTracker(() => 1, 3);
  for (let i = 1; i <= 5; i++) tracker.rejected({ request_idx: i } as never, 1);
  expect(tracker.takeFinished().map((f) => f.request_idx)).toEqual([3, 4, 5]);
  expect(tracker.droppedFinished).toBe(2);
  tracker.dropFinished(tracker.takeFinished());
  expect(tracker.takeFinished()).toEqual([]);
});
