import { Writable } from "node:stream";
import { pino, type Logger } from "pino";

/** A worker's log, kept as text lines, with a way to wait for a line. */
export interface CapturedLog {
  logger: Logger;
  lines: string[];
  /** Resolves once a line matches (one already written, or the next ones); rejects after `timeoutMs`. */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<void>;
}

export function captureLog(level = "debug"): CapturedLog {
  const lines: string[] = [];
  let waiters: { pattern: RegExp; resolve: () => void }[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      const line = chunk.toString("utf8");
      lines.push(line);
      waiters = waiters.filter((waiter) => {
        if (!waiter.pattern.test(line)) return true;
        waiter.resolve();
        return false;
      });
      cb();
    },
  });
  return {
    logger: pino({ level, base: undefined }, sink),
    lines,
    waitFor(pattern, timeoutMs = 20_000) {
      if (lines.some((l) => pattern.test(l))) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`no log line matched ${String(pattern)}`)),
          timeoutMs,
        );
        waiters.push({
          pattern,
          resolve: () => {
            clearTimeout(timer);
            resolve();
          },
        });
      });
    },
  };
}
