import { randomInt } from "node:crypto";
import type { Workflow } from "../comfyui/types.js";

export const RANDOM_INT = "__RANDOM_INT__";
const MAX_EXCLUSIVE = 2 ** 32;

/**
 * Replaces `__RANDOM_INT__` in every input value of a workflow: a value equal to it becomes an integer in
 * [0, 2^32-1]; inside a longer string each occurrence is replaced as text. Every occurrence gets its own value.
 * Returns a new workflow; the argument is not changed.
 */
export function seedRandomInts(
  workflow: Workflow,
  random: () => number = () => randomInt(0, MAX_EXCLUSIVE),
): Workflow {
  const replace = (value: unknown): unknown => {
    if (typeof value === "string") {
      if (value === RANDOM_INT) return random();
      return value.includes(RANDOM_INT) ? value.replaceAll(RANDOM_INT, () => String(random())) : value;
    }
    if (Array.isArray(value)) return value.map(replace);
    if (value !== null && typeof value === "object") {
      return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, replace(v)]));
    }
    return value;
  };
  const out: Workflow = {};
  for (const [id, node] of Object.entries(workflow)) {
    out[id] = { ...node, inputs: replace(node.inputs) as Record<string, unknown> };
  }
  return out;
}
