import { pino, type Logger } from "pino";

export type { Logger } from "pino";

/** JSON lines by default (for log collectors); `pretty` gives a readable terminal view. */
export function createLogger(opts: { level: string; pretty: boolean; name?: string }): Logger {
  return pino({
    name: opts.name ?? "comfyui-worker",
    level: opts.level,
    base: undefined,
    ...(opts.pretty && {
      transport: {
        target: "pino-pretty",
        options: { colorize: true, translateTime: "SYS:HH:MM:ss.l", singleLine: true, ignore: "name" },
      },
    }),
  });
}

export const silentLogger = (): Logger => pino({ level: "silent" });
