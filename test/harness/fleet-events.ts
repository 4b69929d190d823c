import type { Fleet, FleetEvents } from "../../worker/launcher/fleet.js";

export interface FleetRecord {
  /** Every event so far, in order. */
  seen: { name: keyof FleetEvents; event: any }[];
  /** The next `name` event after those this already returned; rejects after `timeoutMs` (30 s unless told). */
  next<K extends keyof FleetEvents>(name: K, timeoutMs?: number): Promise<FleetEvents[K]>;
}

/** Records a fleet's events from now on, so that a test awaits each kind's events one after the other. */
export function recordFleet(fleet: Fleet): FleetRecord {
  const seen: FleetRecord["seen"] = [];
  const wake = new Set<() => void>();
  const names: (keyof FleetEvents)[] = [
    "planned",
    "started",
    "ready",
    "exited",
    "restarting",
    "stopped",
    "warning",
    "startFailed",
    "recycled",
  ];
  for (const name of names) {
    fleet.on(name, (event) => {
      seen.push({ name, event });
      for (const w of [...wake]) w();
    });
  }
  const taken = new Map<keyof FleetEvents, number>();
  return {
    seen,
    async next(name, timeoutMs = 30_000) {
      const n = taken.get(name) ?? 0;
      taken.set(name, n + 1);
      const nth = () => seen.filter((s) => s.name === name)[n]?.event;
      if (nth() !== undefined) return nth();
      let timer: NodeJS.Timeout | undefined;
      let listener: (() => void) | undefined;
      try {
        return await new Promise((resolve, reject) => {
          listener = () => {
            const event = nth();
            if (event !== undefined) resolve(event);
          };
          wake.add(listener);
          timer = setTimeout(
            () => reject(new Error(`no ${name} event #${n + 1} within ${timeoutMs} ms`)),
            timeoutMs,
          );
        });
      } finally {
        clearTimeout(timer);
        wake.delete(listener!);
      }
    },
  };
}
