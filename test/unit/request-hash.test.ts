import { requestHash } from "../../worker/jobs/job.js";
import type { ParsedInput } from "../../worker/schema.js";

const input = (over: Partial<ParsedInput> = {}): ParsedInput => ({
  requestId: "r",
  workflow: {
    "1": { class_type: "KSampler", inputs: { seed: "__RANDOM_INT__", steps: 4 } },
    "2": { class_type: "SaveImage", inputs: { filename_prefix: "x" } },
  },
  s3: undefined,
  webhook: undefined,
  ...over,
});

describe("requestHash", () => {
  test("is the same for the same request, whatever the key order; __RANDOM_INT__ is hashed as sent", () => {
    const reordered = input({
      workflow: {
        "2": { inputs: { filename_prefix: "x" }, class_type: "SaveImage" },
        "1": { inputs: { steps: 4, seed: "__RANDOM_INT__" }, class_type: "KSampler" },
      },
    });
    expect(requestHash(reordered)).toBe(requestHash(input()));
    expect(requestHash(input())).toMatch(/^[0-9a-f]{64}$/);
  });

  test("empty settings mean not given", () => {
    expect(requestHash(input({ s3: {}, webhook: { url: "", secret: "" } }))).toBe(requestHash(input()));
  });

  test.each([
    [
      "the workflow",
      input({ workflow: { "1": { class_type: "SaveImage", inputs: { filename_prefix: "y" } } } }),
    ],
    [
      "a seed given where the first left it random",
      input({
        workflow: { ...input().workflow, "1": { class_type: "KSampler", inputs: { seed: 1, steps: 4 } } },
      }),
    ],
    ["the webhook URL", input({ webhook: { url: "https://example.com/hook" } })],
    ["the webhook's extra_params", input({ webhook: { extra_params: { user: 2 } } })],
    ["the webhook secret", input({ webhook: { secret: "s" } })],
    ["the storage", input({ s3: { bucket_name: "other", access_key_id: "k", secret_access_key: "s" } })],
  ])("differs when %s differs", (_what, other) => {
    expect(requestHash(other)).not.toBe(requestHash(input()));
  });
});
