import type { Got } from "got";
import { redactText, redactUrl } from "../../lib/redact.js";
import { statusIdentity, type StatusIdentity } from "./reporter.js";

export interface StartFailureReport {
  /** REPORT_ADDR's addresses, tried in order until one accepts. */
  addrs: readonly string[];
  identity: StatusIdentity;
  /** Why the worker does not start; its URLs are redacted before it is sent. */
  message: string;
  http: Got;
  /** One line per address tried (already redacted). */
  log: (line: string, delivered: boolean) => void;
  timeoutMs?: number;
}

/**
 * Tells the autoscaler that this worker will not start, as upstream's start_server.sh does: one /worker_status/
 * carrying `error_msg` to each address of REPORT_ADDR in turn until one accepts it, each tried once within its
 * deadline. Returns whether one did. The body names the worker as every report does (statusIdentity).
 */
export async function reportStartFailure(report: StartFailureReport): Promise<boolean> {
  const body = { ...statusIdentity(report.identity), error_msg: redactText(report.message) };
  for (const addr of report.addrs) {
    const shown = `${redactUrl(addr)}/worker_status/`;
    try {
      await report.http.post(`${addr}/worker_status/`, {
        json: body,
        timeout: { request: report.timeoutMs ?? 10_000 },
        retry: { limit: 0 },
      });
      report.log(`reported the failure to ${shown}`, true);
      return true;
    } catch (err) {
      report.log(`could not report the failure to ${shown}: ${redactText(errorText(err))}`, false);
    }
  }
  return false;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
