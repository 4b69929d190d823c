import type { Logger } from "./logger.js";

/** A listener of one event: what it returns is not awaited (a rejected promise is logged as a throw is). */
export type Listener<P> = (payload: P) => void | Promise<void>;

/**
 * A typed event emitter: `E` maps each event's name to its payload. Listeners only observe: one that throws (or
 * rejects) is logged and never reaches the emitter, and the others still run, so that metrics or a page's feed
 * cannot fail a job or crash the loop that emitted. Listeners run in the order they were added.
 */
export class Emitter<E extends object> {
  private readonly listeners = new Map<keyof E, Set<Listener<never>>>();

  constructor(private readonly logger: Pick<Logger, "error">) {}

  /** Adds `fn` for `name`; returns the function that removes it. */
  on<K extends keyof E>(name: K, fn: Listener<E[K]>): () => void {
    let set = this.listeners.get(name);
    if (!set) this.listeners.set(name, (set = new Set()));
    set.add(fn as Listener<never>);
    return () => this.off(name, fn);
  }

  off<K extends keyof E>(name: K, fn: Listener<E[K]>): void {
    const set = this.listeners.get(name);
    set?.delete(fn as Listener<never>);
    if (set?.size === 0) this.listeners.delete(name);
  }

  /** Calls every listener of `name` with `payload`, in turn; one added or removed meanwhile counts from the next emit. */
  emit<K extends keyof E>(name: K, payload: E[K]): void {
    const set = this.listeners.get(name);
    if (!set) return;
    for (const fn of [...set] as Listener<E[K]>[]) {
      try {
        const returned = fn(payload);
        if (returned instanceof Promise) returned.catch((err: unknown) => this.failed(name, err));
      } catch (err) {
        this.failed(name, err);
      }
    }
  }

  /** How many listeners `name` has. */
  listenerCount(name: keyof E): number {
    return this.listeners.get(name)?.size ?? 0;
  }

  private failed(name: keyof E, err: unknown): void {
    this.logger.error({ stage: "events", event: String(name), err }, `a listener of ${String(name)} failed`);
  }
}
