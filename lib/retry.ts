import { delay } from "./backoff.js";

export interface RetryOptions {
  /** Attempts in all (the first included). */
  attempts: number;
  /** The wait after failed attempt `attempt` (1-based), before the next one. */
  delayMs: (attempt: number) => number;
  /** Aborting stops the waits (the helper then rejects with the signal's reason). */
  signal?: AbortSignal | undefined;
  /** Whether a failure may be retried; a client error must not be. All are by default. */
  retryable?: (err: unknown) => boolean;
  /** Told about each failed attempt, and whether another one follows (for logs and metrics). */
  onFailure?: (err: unknown, attempt: number, willRetry: boolean) => void;
}

/**
 * The one retry loop: runs `fn` until it resolves, a failure is not retryable, or the attempts are spent; then
 * rejects with the last failure. Waits between attempts follow `delayMs` (capped, jittered backoff from
 * backoff.ts, or the fixed delays a protocol prescribes).
 */
export async function retry<T>(fn: (attempt: number) => Promise<T>, opts: RetryOptions): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (err) {
      const willRetry = attempt < opts.attempts && (opts.retryable?.(err) ?? true) && !opts.signal?.aborted;
      opts.onFailure?.(err, attempt, willRetry);
      if (!willRetry) throw err;
      await delay(opts.delayMs(attempt), opts.signal);
    }
  }
}
