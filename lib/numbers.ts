/** A number from untrusted JSON: numbers and numeric strings only; anything else (objects too) is NaN. */
export function numeric(v: unknown): number {
  if (typeof v === "number") return v;
  if (typeof v === "string" && v.trim() !== "") return Number(v);
  return NaN;
}

/** Rounded to 3 decimals: how scores and max_perf are reported and cached. */
export const round3 = (n: number): number => Math.round(n * 1000) / 1000;
