/** A number from untrusted JSON: numbers and numeric strings only; anything else (objects too) is NaN. */
export function numeric(v: unknown): number {
  if (typeof v === "number") return v;
  if (typeof v === "string" && v.trim() !== "") return Number(v);
  return NaN;
}
