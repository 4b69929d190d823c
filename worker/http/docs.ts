import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { RequestHandler } from "express";
import { z } from "zod";
import { errorCatalogue } from "../../lib/errors.js";
import { GenerateRequest } from "../schema.js";
import type { RouteHandlers } from "./route-table.js";

/** The OpenAPI document, generated from the same zod schema that validates requests, with the seed's example. */
export function openApiDocument(example: unknown): Record<string, unknown> {
  const request = z.toJSONSchema(GenerateRequest, { target: "openapi-3.0" });
  const result = {
    type: "object",
    properties: {
      id: { type: "string" },
      status: {
        type: "string",
        enum: ["queued", "processing", "generating", "completed", "failed", "cancelled"],
      },
      message: { type: "string" },
      comfyui_response: { type: "object", description: "ComfyUI's /history entry plus execution_details" },
      output: {
        type: "array",
        items: {
          type: "object",
          properties: Object.fromEntries(
            [
              "filename",
              "local_path",
              "url",
              "type",
              "subfolder",
              "node_id",
              "output_type",
              "text",
              "upload_error",
            ].map((k) => [k, { type: "string" }]),
          ),
        },
      },
      timings: { type: "object", additionalProperties: { type: "number" } },
    },
  };
  const body = { required: true, content: { "application/json": { schema: request, example } } };
  const ok = (description: string) => ({
    description,
    content: { "application/json": { schema: { $ref: "#/components/schemas/Result" } } },
  });
  const idParam = [{ name: "id", in: "path", required: true, schema: { type: "string" } }];
  return {
    openapi: "3.0.3",
    info: {
      title: "ComfyUI serverless worker",
      version: "1",
      description:
        "Runs ComfyUI workflows, uploads every output to S3-compatible storage and answers with pre-signed URLs. " +
        "Through the Vast router the same routes take the envelope {auth_data, payload: {input}, session_id}.",
    },
    paths: {
      "/generate/sync": {
        post: {
          summary: "Run a workflow and wait for the result",
          requestBody: body,
          responses: {
            "200": ok("Finished: completed, failed (execution error, upload failure) or cancelled"),
            "400": ok("Invalid request or workflow (ComfyUI's error and node_errors)"),
            "413": { description: "A size limit was exceeded (named in the message)" },
            "503": { description: "ComfyUI unavailable; retry" },
          },
        },
      },
      "/generate": {
        post: {
          summary: "Submit a workflow; poll /result/{id}",
          requestBody: body,
          responses: { "202": ok("Accepted") },
        },
      },
      "/generate/stream": {
        post: {
          summary:
            "Run a workflow, streaming one JSON object per line (status, progress, executed, result last)",
          requestBody: body,
          responses: { "200": { description: "application/x-ndjson" } },
        },
      },
      "/result/{id}": {
        get: {
          summary: "A job's result or live status",
          parameters: idParam,
          responses: { "200": ok("The job"), "404": { description: "Unknown" } },
        },
      },
      "/cancel/{id}": {
        post: {
          summary: "Cancel a queued or running job",
          parameters: idParam,
          responses: { "200": ok("The job") },
        },
      },
      "/models/prefetch": {
        post: {
          summary: "Warm models into their folders (docs/api.md, Warming models)",
          requestBody: {
            required: true,
            content: {
              "application/json": {
                example: { models: [{ folder: "loras", ref: "https://host/style.safetensors" }] },
              },
            },
          },
          responses: {
            "200": { description: "Each model's name, bytes and whether it was cached" },
            "400": {
              description: "A malformed body, folder or reference (bad_request, model_bad_reference)",
            },
            "413": { description: "model_too_large" },
            "424": { description: "model_unreachable, model_access_denied" },
          },
        },
      },
      "/health": { get: { summary: "Liveness", responses: { "200": { description: "Alive" } } } },
      "/ready": {
        get: {
          summary: "Readiness: ComfyUI up, benchmark done",
          responses: { "200": { description: "Ready" }, "503": { description: "Not ready" } },
        },
      },
      "/metrics": {
        get: { summary: "Prometheus metrics", responses: { "200": { description: "text/plain" } } },
      },
    },
    components: { schemas: { Result: result, Error: errorSchema() } },
  };
}

/**
 * Every error body the worker answers (`{error, code, ...details}`), with the catalogue of codes: each one's HTTP
 * status, whether another attempt may succeed (the Vast client retries 5xx), and what it means.
 */
function errorSchema(): Record<string, unknown> {
  const catalogue = errorCatalogue();
  const rows = catalogue.map(
    (e) => `| \`${e.code}\` | ${e.httpStatus} | ${e.retryable ? "yes" : "no"} | ${e.meaning} |`,
  );
  return {
    type: "object",
    required: ["error", "code"],
    properties: {
      error: { type: "string", description: "What went wrong, naming the limit or the field" },
      code: { type: "string", enum: catalogue.map((e) => e.code) },
    },
    description: ["| code | HTTP status | retryable | meaning |", "|---|---|---|---|", ...rows].join("\n"),
    "x-error-codes": catalogue,
  };
}

/** The only files of swagger-ui-dist that the /docs page loads (the bundle carries these and no others). */
export const SWAGGER_UI_FILES = ["swagger-ui.css", "swagger-ui-bundle.js"] as const;

/** `swaggerUiDir`: the folder holding SWAGGER_UI_FILES (lib/install.ts `installLayout().swaggerUi`). */
export function docsRoutes(
  example: unknown,
  swaggerUiDir: string,
): RouteHandlers<"GET /openapi.json" | "GET /docs" | "GET /docs/" | "GET /docs/assets/:file"> {
  const doc = openApiDocument(example);
  const page = `<!doctype html><html><head><meta charset="utf-8"><title>ComfyUI worker API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head><body><div id="ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#ui" });</script></body></html>`;
  const sendPage: RequestHandler = (_req, res) => void res.type("html").send(page);
  return {
    "GET /openapi.json": (_req, res) => void res.json(doc),
    "GET /docs": sendPage,
    "GET /docs/": sendPage,
    "GET /docs/assets/:file": (req, res) => {
      // Looked up among the files the page loads, so that no request names a path.
      const file = SWAGGER_UI_FILES.find((f) => f === req.params.file);
      if (!file) return void res.status(404).type("text/plain").send("no such file");
      res.sendFile(join(swaggerUiDir, file));
    },
  };
}

export function loadExample(root: string): unknown {
  const workflow = JSON.parse(
    readFileSync(join(root, "misc", "workflows", "sd15_text2image.json"), "utf8"),
  ) as unknown;
  return {
    input: {
      request_id: "",
      workflow_json: workflow,
      s3: { access_key_id: "", secret_access_key: "", endpoint_url: "", bucket_name: "", region: "" },
      webhook: { url: "", extra_params: { user_id: "12345", project_id: "abc-def" } },
    },
  };
}
