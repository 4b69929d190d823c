import { pino, type DestinationStream, type Logger, type StreamEntry } from "pino";

export type { Logger } from "pino";

const PRETTY: Record<string, unknown> = {
  colorize: true,
  translateTime: "SYS:HH:MM:ss.l",
  singleLine: true,
  ignore: "name",
};

/**
 * JSON lines by default (for log collectors); `pretty` gives a readable terminal view. With `file`, every line is
 * also appended there: a process manager that stops the reader of our output (supervisor's stopasgroup signals
 * start_server.sh's `tee` with us) leaves stdout a closed pipe, and what the drain logs from then on is kept in
 * the file. Both are written synchronously, so that the last lines are out before the process exits.
 */
export function createLogger(opts: { level: string; pretty: boolean; name?: string; file?: string }): Logger {
  const options = { name: opts.name ?? "comfyui-worker", level: opts.level, base: undefined };
  if (opts.file === undefined) {
    return pino({
      ...options,
      ...(opts.pretty && { transport: { target: "pino-pretty", options: PRETTY } }),
    });
  }
  if (opts.pretty) {
    // pino-pretty only runs in a worker thread (from the sources, never the bundle): both targets go there.
    return pino(
      options,
      pino.transport({
        targets: [
          { target: "pino-pretty", options: PRETTY, level: "trace" },
          {
            target: "pino/file",
            options: { destination: opts.file, append: true, mkdir: true },
            level: "trace",
          },
        ],
      }),
    );
  }
  let file: DestinationStream | undefined;
  let fileError: unknown;
  try {
    file = pino.destination({ dest: opts.file, append: true, mkdir: true, sync: true });
  } catch (err) {
    fileError = err;
  }
  // pino's destinations go quiet once their reader is gone (EPIPE): the file's lines go on.
  const streams: StreamEntry[] = [{ stream: pino.destination({ dest: 1, sync: true }), level: "trace" }];
  if (file) streams.push({ stream: file, level: "trace" });
  const logger = pino(options, pino.multistream(streams));
  if (fileError !== undefined) {
    logger.warn(
      { stage: "lifecycle", err: fileError },
      `LOG_FILE ${opts.file} cannot be written: logging to stdout only`,
    );
  }
  return logger;
}

export const silentLogger = (): Logger => pino({ level: "silent" });
