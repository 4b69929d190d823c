/**
 * What the operator page's event stream (/console/events) carries: shared by the worker (worker/console/feed.ts)
 * and the page (web/console/app.ts). Types only, so the page loads nothing from here at run time.
 */

export interface ConsoleStatus {
  started_at: number;
  phase: string;
  error_msg: string;
  /** While benchmarking: the round running ("warmup", "1", ...) and the most rounds it may take. */
  benchmark_round: { label: string; max_rounds: number } | null;
  score: { max_perf: number; how: string };
  /** `up` when any backend takes prompts; `backends` lists each (one per GPU). */
  comfyui: { url: string; up: boolean; backends: BackendState[] };
  queue: { active: number; workload: number; expected_wait_s: number | null; max_queue_time_s: number };
  autoscaler: {
    addrs: string[];
    last: { at: number; delivered: boolean; fields: Record<string, unknown> } | null;
  };
  disk: {
    path: string;
    free_bytes: number | null;
    min_free_bytes: number;
    janitor_last: { at: number; removed: number; bytes: number; free_after: number } | null;
  };
  s3: {
    target: string | null;
    reachable: boolean | null;
    checked_at: number | null;
    error: string | null;
  };
}

export interface ConsoleOutput {
  filename: string;
  /** This worker's copy (/console/output/...), or null when it has none. */
  local: string | null;
  /** The stored copy (pre-signed URL), when uploaded. */
  url: string | null;
  kind: "image" | "video" | "audio" | "text" | "other";
  text: string | null;
  upload_error: string | null;
}

export interface ConsoleJob {
  id: string;
  status: string;
  message: string;
  /** A job of the worker's own (the boot benchmark). */
  internal: boolean;
  created_at: number;
  finished_at: number | null;
  timings: {
    preprocess_ms: number;
    queue_ms: number;
    generation_ms: number;
    postprocess_ms: number;
    total_ms: number;
  };
  progress: {
    nodes_done: number;
    nodes_total: number;
    node: string | null;
    node_type: string | null;
    step: number | null;
    steps: number | null;
    /** 0-100, over the whole workflow (finished nodes plus the running node's steps). */
    percent: number;
  };
  outputs: ConsoleOutput[];
  error: { code: string; message: string; node_type: string | null; exception: string | null } | null;
  /** The latest live preview while it runs (a request that asked for previews): a data: URL, small by request. */
  preview: { src: string; node: string | null; step: number | null } | null;
}

/** One ComfyUI backend as the worker sees it. */
export interface BackendState {
  index: number;
  url: string;
  up: boolean;
  /** Why it is out of service for good, or null. */
  failed: string | null;
  /** Its score (what it adds to max_perf). */
  perf: number;
  /** Prompts it holds now. */
  running: number;
}
