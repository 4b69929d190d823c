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
});

export const GenerateRequest = z.object({ input: GenerateInput });

export type GenerateInputT = z.infer<typeof GenerateInput>;

const REQUEST_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export interface ParsedInput {
  requestId: string;
  workflow: Workflow;
  s3: z.infer<typeof S3Override> | undefined;
  webhook: z.infer<typeof WebhookSpec> | undefined;
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
  return { requestId, workflow: input.workflow_json as Workflow, s3: input.s3, webhook: input.webhook };
}
