/**
 * ComfyUI's wire types, as far as the worker reads them (server.py, execution.py of ComfyUI 0.3.x; the jobs API,
 * comfy_execution/jobs.py, of the versions that have it). Objects may carry keys not named here: newer ComfyUIs add
 * them (asset ids in `executed`, a job's preview), and nothing the worker reads refuses them.
 */

export type NodeInputValue = unknown;
export interface WorkflowNode {
  class_type: string;
  inputs: Record<string, NodeInputValue>;
  _meta?: { title?: string };
}
/** An API-format graph: node id -> node. */
export type Workflow = Record<string, WorkflowNode>;

export interface QueuePromptResponse {
  prompt_id: string;
  number: number;
  /**
   * Output nodes that failed validation while others passed (a 200 all the same): ComfyUI runs the prompt without
   * them. Node id -> its errors and the output nodes that depend on it.
   */
  node_errors: Record<string, NodeError>;
}

/** One node's validation errors in /prompt's `node_errors`. */
export interface NodeError {
  errors?: { type?: string; message?: string; details?: string }[];
  /** The output nodes that will not run because of this node. */
  dependent_outputs?: string[];
  class_type?: string;
}

export interface OutputFileRef {
  filename: string;
  subfolder: string;
  type: string;
}

export interface HistoryEntry {
  prompt: unknown[];
  outputs: Record<string, Record<string, unknown>>;
  status?: { status_str: string; completed: boolean; messages: [string, Record<string, unknown>][] };
  meta?: Record<string, unknown>;
}

export interface ComfyEvent {
  type: string;
  data: Record<string, unknown> & { prompt_id?: string };
}

export interface ObjectInfoNode {
  output_node?: boolean;
  input?: { required?: Record<string, unknown>; optional?: Record<string, unknown> };
}

/** A prompt's state in the jobs API (ComfyUI >= 0.6.0, comfy_execution/jobs.py's JobStatus). */
export type JobState = "pending" | "in_progress" | "completed" | "failed" | "cancelled";

/** GET /api/jobs/{id}: a queued or running prompt, or one in the history (then with its outputs and status). */
export interface ComfyJob {
  id: string;
  status: JobState | (string & {});
  outputs?: HistoryEntry["outputs"];
  execution_status?: HistoryEntry["status"];
  execution_error?: Record<string, unknown>;
}

/** What one ComfyUI offers beyond what every version since 0.3 has; detected once per backend (ComfyBackend). */
export interface ComfyCapabilities {
  /** GET /api/jobs/{id} (ComfyUI >= 0.6.0): a prompt's state in one call, whatever the WebSocket delivered. */
  jobsApi: boolean;
  /**
   * POST /api/jobs/{id}/cancel (ComfyUI >= 0.26.0): interrupts the prompt only while it is the one running, under
   * the queue's lock, or removes it from the queue. Without it, /queue delete + /interrupt can hit the next prompt.
   */
  atomicCancel: boolean;
  /** The server's feature flags (GET /features, as its WebSocket's `feature_flags` message); {} where absent. */
  featureFlags: Record<string, unknown>;
}

/** What a ComfyUI without the newer routes offers: every call falls back to the 0.3 API. */
export const BASELINE_CAPABILITIES: Readonly<ComfyCapabilities> = Object.freeze({
  jobsApi: false,
  atomicCancel: false,
  featureFlags: Object.freeze({}),
});
