/**
 * Progress as ComfyUI reports it: older versions send one event per step, newer ones throttle them (the first, the
 * last, and at most one per 100 ms between). What holds on both: values strictly increase and end at `max`.
 */
export function expectProgressToMax(updates: { value: number; max: number }[], max: number): void {
  expect(updates.length).toBeGreaterThan(0);
  const values = updates.map((u) => u.value);
  for (let i = 1; i < values.length; i++) expect(values[i]).toBeGreaterThan(values[i - 1]!);
  expect(updates.at(-1)).toMatchObject({ value: max, max });
}
