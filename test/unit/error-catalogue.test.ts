import { readFileSync } from "node:fs";
import { join } from "node:path";
import * as errors from "../../lib/errors.js";
import { ERROR_CLASSES, WorkerError, errorCatalogue } from "../../lib/errors.js";
import { openApiDocument } from "../../worker/http/docs.js";

const root = join(import.meta.dirname, "..", "..");

describe("the error catalogue", () => {
  test("every error class of lib/errors.ts is in ERROR_CLASSES, each code once", () => {
    const classes = Object.values(errors).filter(
      (v): v is typeof WorkerError => typeof v === "function" && v.prototype instanceof WorkerError,
    );
    expect(new Set(classes)).toEqual(new Set(ERROR_CLASSES));
    const codes = errorCatalogue().map((e) => e.code);
    expect(new Set(codes).size).toBe(codes.length);
  });

  test("retryable errors are 5xx and every other answer a caller gets is not", () => {
    for (const e of errorCatalogue()) {
      expect([e.code, e.retryable]).toEqual([e.code, e.httpStatus >= 500 && e.code !== "internal_error"]);
      expect(e.meaning.length).toBeGreaterThan(10);
    }
  });

  test("/docs (OpenAPI) lists every code with its status and retryability", () => {
    const doc = openApiDocument({}) as {
      components: { schemas: { Error: { properties: { code: { enum: string[] } }; description: string } } };
    };
    const schema = doc.components.schemas.Error;
    for (const e of errorCatalogue()) {
      expect(schema.properties.code.enum).toContain(e.code);
      expect(schema.description).toContain(
        `| \`${e.code}\` | ${e.httpStatus} | ${e.retryable ? "yes" : "no"} |`,
      );
    }
  });

  test("docs/api.md's table lists every code with its status and retryability", () => {
    const page = readFileSync(join(root, "docs", "api.md"), "utf8");
    for (const e of errorCatalogue()) {
      expect(page).toMatch(
        new RegExp(`\\| \`${e.code}\` +\\| ${e.httpStatus} +\\| ${e.retryable ? "yes" : "no"} +\\|`),
      );
    }
  });
});
