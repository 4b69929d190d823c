/**
 * A counting semaphore: at most `size` holders at once, the others wait in arrival order. A waiter whose signal
 * aborts leaves the queue at once (rejected with the signal's reason) and never takes a slot.
 */
export class Slots {
  private free: number;
  /** Waiters in arrival order (a Set keeps insertion order and removes an aborted one in O(1)). */
  private readonly queue = new Set<() => void>();

  constructor(size: number) {
    if (!Number.isInteger(size) || size < 1) throw new RangeError(`slots: size must be >= 1, got ${size}`);
    this.free = size;
  }

  /** How many wait for a slot now. */
  get waiting(): number {
    return this.queue.size;
  }

  /** Resolves with the release function once a slot is held. */
  acquire(signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted) return Promise.reject(signal.reason as Error);
    if (this.free > 0) {
      this.free--;
      return Promise.resolve(this.releaser());
    }
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        this.queue.delete(grant);
        reject(signal!.reason as Error);
      };
      const grant = () => {
        signal?.removeEventListener("abort", onAbort);
        resolve(this.releaser());
      };
      this.queue.add(grant);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** Runs `fn` while holding a slot. */
  async run<T>(signal: AbortSignal | undefined, fn: () => Promise<T>): Promise<T> {
    const release = await this.acquire(signal);
    try {
      return await fn();
    } finally {
      release();
    }
  }

  private releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.queue.values().next();
      if (next.done) {
        this.free++;
      } else {
        // The slot passes straight to the next waiter.
        this.queue.delete(next.value);
        next.value();
      }
    };
  }
}
