/** ComfyUI's wire types, as far as the worker reads them (server.py, execution.py of ComfyUI 0.3.x). */

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
  node_errors: Record<string, unknown>;
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
