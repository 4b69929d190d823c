/**
 * Admission control as the router sees it: expected wait = (workload queued + in flight) / max_perf, measured
 * before the new request is added (as upstream). Above `maxQueueTimeS` the request is refused with 429 so that the
 * client re-routes it. With no benchmark score yet, any load means an unbounded wait.
 */
export class Admission {
  constructor(
    private readonly maxQueueTimeS: number,
    private readonly currentWorkload: () => number,
    /** The worker's score now (the Capacity's max_perf); 0 before any is known. */
    private readonly score: () => number = () => 0,
  ) {}

  get maxPerf(): number {
    return this.score();
  }

  expectedWaitS(): number {
    const load = this.currentWorkload();
    if (load <= 0) return 0;
    return this.maxPerf > 0 ? load / this.maxPerf : Infinity;
  }

  admits(): boolean {
    return this.expectedWaitS() <= this.maxQueueTimeS;
  }
}
