import { randomUUID } from "node:crypto";
import { z } from "zod";
import { BadRequestError, PayloadTooLargeError } from "../lib/errors.js";
import type { Workflow } from "../handlers/comfyui/types.js";

/**
 * The request schema of /generate*: one definition validates requests and generates the OpenAPI document.
 * Field names follow the template's API wrapper (`../docs` in the README).
 */
const optionalText = z.string().optional().describe("Empty means not given");

export const S3Override = z
  .object({
    access_key_id: optionalText,
    secret_access_key: optionalText,
    endpoint_url: optionalText,
    bucket_name: optionalText,
    region: optionalText,
  })
  .describe("Per-request storage; each non-empty field overrides the matching S3_* variable");

export const WebhookSpec = z
  .object({
    url: optionalText.describe("Called on completion and on failure; falls back to WEBHOOK_URL"),
    extra_params: z
      .record(z.string(), z.unknown())
      .optional()
      .describe("Echoed as `extra` in the webhook body"),
    secret: optionalText.describe("Standard Webhooks secret for this request (overrides WEBHOOK_SECRET)"),
  })
  .describe("Webhook configuration");

export const PREVIEW_DEFAULTS = Object.freeze({ max_px: 256, every_ms: 500 });

export const PreviewSpec = z
  .object({
    max_px: z
      .number()
      .int()
      .min(8)
      .max(2048)
      .optional()
      .describe(
        `Largest side of a preview in pixels, ${PREVIEW_DEFAULTS.max_px} by default; a larger frame is shrunk and sent as PNG`,
      ),
    every_ms: z
      .number()
      .int()
      .min(100)
      .max(600_000)
      .optional()
      .describe(
        `Least interval between two previews in milliseconds, ${PREVIEW_DEFAULTS.every_ms} by default`,
      ),
  })
  .strict()
  .describe(
    "Live previews of the sampler as `preview` lines on /generate/stream (ComfyUI >= 0.5.0; see docs/api.md). Off when absent",
  );

export const WorkflowNodeSchema = z
  .object({
    class_type: z.string().min(1),
    inputs: z.record(z.string(), z.unknown()),
    _meta: z.object({ title: z.string().optional() }).passthrough().optional(),
  })
  .passthrough();

export const GenerateInput = z.object({
  request_id: z
    .string()
    .optional()
    .describe(
      "Your id for this job (letters, digits, . _ -; minted when empty). A repeat returns the same job.",
    ),
  workflow_json: z
    .record(z.string(), WorkflowNodeSchema)
    .describe("A ComfyUI API-format graph. `__RANDOM_INT__` values are seeded; URL inputs are downloaded."),
  s3: S3Override.optional(),
  webhook: WebhookSpec.optional(),
  preview: PreviewSpec.optional(),
});

export const GenerateRequest = z.object({ input: GenerateInput });

export type GenerateInputT = z.infer<typeof GenerateInput>;

const REQUEST_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export interface ParsedInput {
  requestId: string;
  workflow: Workflow;
  s3: z.infer<typeof S3Override> | undefined;
  webhook: z.infer<typeof WebhookSpec> | undefined;
  /** Live previews asked for (defaults filled in); absent: none. */
  preview?: { maxPx: number; everyMs: number };
  /** Set by the worker itself (the benchmark), never from a request. */
  internal?: {
    skipStorage?: boolean;
    warmup?: boolean;
    /** Run on this ComfyUI backend only (the benchmark measures each). */
    backend?: number;
  };
}

/** Validates `{input}` (the payload). Client mistakes are BadRequestError (400) or PayloadTooLargeError (413). */
export function parseGenerateInput(payload: unknown, limits: { maxWorkflowNodes: number }): ParsedInput {
  const parsed = GenerateRequest.safeParse(payload);
  if (!parsed.success) {
    throw new BadRequestError("invalid request", {
      issues: parsed.error.issues.map((i) => ({ path: i.path.join("."), message: i.message })),
    });
  }
  const input = parsed.data.input;
  const requestId = input.request_id?.trim() ? input.request_id.trim() : randomUUID();
  if (!REQUEST_ID.test(requestId) || requestId.includes("..")) {
    throw new BadRequestError(
      "request_id may hold only letters, digits, '.', '_' and '-' (at most 128, no '..', not starting with a symbol)",
    );
  }
  const nodes = Object.keys(input.workflow_json).length;
  if (nodes === 0) throw new BadRequestError("workflow_json has no nodes");
  if (nodes > limits.maxWorkflowNodes) {
    throw new PayloadTooLargeError(
      `workflow_json has ${nodes} nodes, above MAX_WORKFLOW_NODES=${limits.maxWorkflowNodes}`,
    );
  }
  return {
    requestId,
    workflow: input.workflow_json as Workflow,
    s3: input.s3,
    webhook: input.webhook,
    ...(input.preview && {
      preview: {
        maxPx: input.preview.max_px ?? PREVIEW_DEFAULTS.max_px,
        everyMs: input.preview.every_ms ?? PREVIEW_DEFAULTS.every_ms,
      },
    }),
  };
}
