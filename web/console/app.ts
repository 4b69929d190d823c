/**
 * The operator page: status and jobs from the worker's event stream (/console/events), and a form that runs a
 * workflow through POST /generate/stream. Every text from the worker goes in through textContent, never as HTML:
 * job messages carry what ComfyUI and callers wrote.
 */
import type { ConsoleJob, ConsoleOutput, ConsoleStatus } from "./wire.js";

const $ = <T extends HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing from the page`);
  return el as T;
};

function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string | null)[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  for (const c of children) if (c !== null) el.append(c);
  return el;
}

const secs = (ms: number) => (ms < 10_000 ? `${(ms / 1000).toFixed(2)} s` : `${(ms / 1000).toFixed(1)} s`);
const bytes = (n: number) =>
  n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(1)} GiB` : `${(n / 2 ** 20).toFixed(0)} MiB`;
const ago = (at: number) => {
  const s = Math.max(0, Math.round((Date.now() - at) / 1000));
  return s < 60 ? `${s} s ago` : s < 3600 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
};
const clock = (at: number) => new Date(at).toLocaleTimeString();

// ---- status ---------------------------------------------------------------------------------------------------

const PHASE_TEXT: Record<string, string> = {
  starting: "starting",
  "waiting-for-comfyui": "waiting for ComfyUI",
  benchmarking: "benchmarking",
  ready: "ready",
  error: "error",
  draining: "draining",
  stopped: "stopped",
};
const tone = (phase: string) =>
  phase === "ready" ? "ok" : phase === "error" ? "bad" : phase === "draining" ? "warn" : "busy";

let lastStatus: ConsoleStatus | undefined;

/** One backend: where it is; several: how many take prompts, and what is wrong with the others. */
function comfyCard(c: ConsoleStatus["comfyui"]): HTMLElement {
  const serving = c.backends.filter((b) => b.up && b.failed === null);
  if (c.backends.length <= 1)
    return card("ComfyUI", c.up ? "answering" : "not answering", c.url, c.up ? "ok" : "bad");
  const out = c.backends
    .filter((b) => !serving.includes(b))
    .map((b) => `#${b.index} ${b.url}: ${b.failed ?? "not answering"}`);
  return card(
    "ComfyUI",
    `${serving.length} of ${c.backends.length} backends answering`,
    out.length > 0 ? out.join("; ") : c.url,
    serving.length === c.backends.length ? "ok" : serving.length > 0 ? "warn" : "bad",
  );
}

function card(title: string, value: string, detail: string, state: "ok" | "bad" | "warn" | "busy" | "") {
  return h(
    "div",
    { class: `card ${state}` },
    h("dt", {}, title),
    h("dd", { class: "value" }, value),
    h("dd", { class: "detail" }, detail),
  );
}

function renderStatus(s: ConsoleStatus): void {
  lastStatus = s;
  const phase = $("phase");
  phase.textContent = PHASE_TEXT[s.phase] ?? s.phase;
  phase.className = `badge ${tone(s.phase)}`;
  const banner = $("error");
  banner.hidden = !s.error_msg;
  banner.textContent = s.error_msg ? `Error: ${s.error_msg}` : "";

  const bench = s.benchmark_round
    ? `round ${s.benchmark_round.label === "warmup" ? "warm-up" : s.benchmark_round.label} of at most ${s.benchmark_round.max_rounds}`
    : `up since ${clock(s.started_at)}`;
  const wait =
    s.queue.expected_wait_s === null ? "unbounded (no score yet)" : `${s.queue.expected_wait_s.toFixed(1)} s`;
  const last = s.autoscaler.last;
  const told = last
    ? `${last.delivered ? "told" : "failed to tell"} ${ago(last.at)}: max_perf ${String(last.fields.max_perf)}, ` +
      `load ${String(last.fields.cur_load)}${last.fields.error_msg ? `, error "${String(last.fields.error_msg)}"` : ""}`
    : s.autoscaler.addrs.length > 0
      ? "nothing sent yet"
      : "REPORT_ADDR not set: nothing is reported";
  const disk = s.disk.free_bytes === null ? "…" : `${bytes(s.disk.free_bytes)} free`;
  const low = s.disk.free_bytes !== null && s.disk.free_bytes < s.disk.min_free_bytes;
  const j = s.disk.janitor_last;
  const janitor = j
    ? `janitor ${ago(j.at)}: removed ${j.removed} (${bytes(j.bytes)})`
    : `janitor not run yet; keeps ${bytes(s.disk.min_free_bytes)} free`;
  const s3 = s.s3.target
    ? s.s3.reachable === null
      ? card("S3", "checking…", s.s3.target, "busy")
      : card(
          "S3",
          s.s3.reachable ? "reachable" : "unreachable",
          s.s3.reachable ? s.s3.target : (s.s3.error ?? s.s3.target),
          s.s3.reachable ? "ok" : "bad",
        )
    : card("S3", "not configured", "outputs stay local unless a request names a bucket", "");

  $("cards").replaceChildren(
    card("Phase", PHASE_TEXT[s.phase] ?? s.phase, bench, tone(s.phase)),
    card("Score (max_perf)", s.score.max_perf.toFixed(3), s.score.how, s.score.max_perf > 0 ? "ok" : "busy"),
    comfyCard(s.comfyui),
    card(
      "Queue",
      `${s.queue.active} job${s.queue.active === 1 ? "" : "s"}`,
      `expected wait ${wait} (limit ${s.queue.max_queue_time_s} s)`,
      s.queue.expected_wait_s === null || s.queue.expected_wait_s > s.queue.max_queue_time_s ? "warn" : "ok",
    ),
    card(
      "Autoscaler",
      s.autoscaler.addrs.length > 0 ? (last?.delivered === false ? "unreachable" : "reporting") : "off",
      told,
      last?.delivered === false ? "bad" : s.autoscaler.addrs.length > 0 ? "ok" : "",
    ),
    card("Disk", disk, janitor, low ? "warn" : s.disk.free_bytes === null ? "" : "ok"),
    s3,
  );
}

// ---- jobs -----------------------------------------------------------------------------------------------------

const jobs = new Map<string, ConsoleJob>();
const STAGES = ["preprocess", "queue", "generation", "postprocess"] as const;

function thumb(o: ConsoleOutput): HTMLElement {
  const src = o.local ?? o.url;
  const link = o.url ?? o.local;
  let media: HTMLElement;
  if (o.kind === "image" && src) media = h("img", { src, alt: o.filename, loading: "lazy" });
  else if (o.kind === "video" && src)
    media = h("video", { src, muted: "", loop: "", autoplay: "", "aria-label": o.filename });
  else if (o.kind === "text") media = h("span", { class: "text" }, (o.text ?? "").slice(0, 200));
  else media = h("span", { class: "file" }, o.filename);
  const fig = h(
    "figure",
    {},
    link ? h("a", { href: link, target: "_blank", rel: "noopener" }, media) : media,
  );
  fig.append(h("figcaption", {}, o.filename));
  if (o.upload_error) fig.append(h("span", { class: "cause" }, `upload failed: ${o.upload_error}`));
  return fig;
}

function stageBar(j: ConsoleJob): HTMLElement {
  const t = j.timings;
  const total = Math.max(1, t.total_ms || STAGES.reduce((a, s) => a + t[`${s}_ms`], 0));
  const bar = h("div", {
    class: "stages",
    role: "img",
    "aria-label": STAGES.map((s) => `${s} ${secs(t[`${s}_ms`])}`).join(", "),
  });
  for (const s of STAGES) {
    const ms = t[`${s}_ms`];
    if (ms <= 0) continue;
    const seg = h("span", { class: `seg ${s}`, title: `${s}: ${secs(ms)}` });
    seg.style.width = `${(ms / total) * 100}%`;
    bar.append(seg);
  }
  return bar;
}

function jobItem(j: ConsoleJob): HTMLElement {
  const running = j.finished_at === null;
  const li = h("li", { class: `job ${j.status}`, "data-id": j.id });
  const head = h(
    "div",
    { class: "job-head" },
    h("span", { class: `badge ${statusTone(j.status)}` }, j.status),
    h("code", { class: "id", title: j.id }, j.id),
    j.internal ? h("span", { class: "tag" }, "benchmark") : null,
    h(
      "span",
      { class: "when" },
      running ? `started ${clock(j.created_at)}` : `${secs(j.timings.total_ms)} · ${clock(j.created_at)}`,
    ),
  );
  li.append(head);
  if (running) {
    const p = j.progress;
    const where = p.node_type ? `${p.node_type} (node ${p.node})` : j.message;
    const steps = p.step !== null && p.steps !== null ? ` · step ${p.step}/${p.steps}` : "";
    li.append(
      h(
        "div",
        { class: "bar-label" },
        h("span", {}, `${where}${steps}`),
        h("span", {}, `${p.nodes_done}/${p.nodes_total} nodes · ${p.percent.toFixed(0)} %`),
      ),
      progressBar(p.percent, `Progress of ${j.id}`),
    );
    if (j.preview) {
      const step = j.preview.step !== null ? `, step ${j.preview.step}` : "";
      li.append(
        h("img", {
          class: "preview",
          src: j.preview.src,
          alt: `Live preview of node ${j.preview.node ?? "?"}${step}`,
          title: `node ${j.preview.node ?? "?"}${step}`,
        }),
      );
    }
  } else {
    li.append(stageBar(j));
    // A failure's message is in its cause box below.
    if (!j.error) li.append(h("p", { class: "message" }, j.message));
  }
  if (j.error) {
    const where = [j.error.node_type && `in ${j.error.node_type}`, j.error.exception]
      .filter(Boolean)
      .join(": ");
    li.append(
      h(
        "p",
        { class: "cause" },
        h("strong", {}, j.error.code),
        ` ${j.error.message}`,
        where ? h("span", { class: "where" }, where) : null,
      ),
    );
  }
  if (j.outputs.length > 0) li.append(h("div", { class: "thumbs" }, ...j.outputs.map(thumb)));
  return li;
}

const statusTone = (s: string) =>
  s === "completed" ? "ok" : s === "failed" ? "bad" : s === "cancelled" ? "warn" : "busy";

function progressBar(percent: number, label: string): HTMLElement {
  const fill = h("div", { class: "fill" });
  fill.style.width = `${percent}%`;
  return h(
    "div",
    {
      class: "progress",
      role: "progressbar",
      "aria-label": label,
      "aria-valuemin": "0",
      "aria-valuemax": "100",
      "aria-valuenow": String(Math.round(percent)),
    },
    fill,
  );
}

function renderJobs(): void {
  const list = [...jobs.values()].sort((a, b) => {
    const ra = a.finished_at === null ? 1 : 0;
    const rb = b.finished_at === null ? 1 : 0;
    return rb - ra || b.created_at - a.created_at;
  });
  $("jobs").replaceChildren(...list.slice(0, 25).map(jobItem));
  $("no-jobs").hidden = list.length > 0;
}

// ---- the event stream -----------------------------------------------------------------------------------------

function connect(): void {
  const live = $("live");
  const es = new EventSource("/console/events");
  es.onopen = () => {
    live.textContent = "live";
    live.className = "live on";
  };
  es.onerror = () => {
    // EventSource reconnects by itself; say so meanwhile.
    live.textContent = "reconnecting…";
    live.className = "live";
  };
  es.addEventListener("status", (e) =>
    renderStatus(JSON.parse((e as MessageEvent<string>).data) as ConsoleStatus),
  );
  es.addEventListener("jobs", (e) => {
    jobs.clear();
    for (const j of JSON.parse((e as MessageEvent<string>).data) as ConsoleJob[]) jobs.set(j.id, j);
    renderJobs();
  });
  es.addEventListener("job", (e) => {
    const j = JSON.parse((e as MessageEvent<string>).data) as ConsoleJob;
    jobs.set(j.id, j);
    renderJobs();
  });
  // Relative times ("12 s ago") age without new events.
  setInterval(() => lastStatus && renderStatus(lastStatus), 5_000);
}

// ---- try a workflow -------------------------------------------------------------------------------------------

interface StreamLine {
  type: string;
  id: string;
  status?: string;
  message?: string;
  node?: string | null;
  nodes?: string[];
  value?: number;
  max?: number;
  output?: { filename: string; url?: string; output_type: string; text?: string; upload_error?: string }[];
  error?: { code?: string; error?: string };
  http_status?: number;
}

let running: AbortController | undefined;

function setRun(percent: number, text: string): void {
  const bar = $("run-bar");
  bar.setAttribute("aria-valuenow", String(Math.round(percent)));
  (bar.firstElementChild as HTMLElement).style.width = `${percent}%`;
  $("run-pct").textContent = `${Math.round(percent)} %`;
  $("run-text").textContent = text;
}

async function runWorkflow(text: string): Promise<void> {
  const result = $("run-result");
  const outputs = $("run-outputs");
  let workflow: Record<string, { class_type?: string }>;
  try {
    workflow = JSON.parse(text) as typeof workflow;
    if (!workflow || typeof workflow !== "object" || Array.isArray(workflow))
      throw new Error("not an object");
  } catch (err) {
    $("run-state").hidden = false;
    result.className = "result bad";
    result.textContent = `The workflow is not valid JSON: ${(err as Error).message}`;
    return;
  }
  running = new AbortController();
  $<HTMLButtonElement>("run").disabled = true;
  $<HTMLButtonElement>("cancel").disabled = false;
  $("run-state").hidden = false;
  $("run-state").className = "run";
  result.textContent = "";
  result.className = "result";
  outputs.replaceChildren();
  setRun(0, "Submitting…");

  const total = Math.max(1, Object.keys(workflow).length);
  const done = new Set<string>();
  let current: string | null = null;
  const name = (node: string | null) => (node && workflow[node]?.class_type) || node || "";
  const handle = (line: StreamLine) => {
    switch (line.type) {
      case "status":
        setRun(Number($("run-bar").getAttribute("aria-valuenow")), line.message ?? line.status ?? "");
        break;
      case "cached":
        for (const n of line.nodes ?? []) done.add(n);
        setRun((done.size / total) * 100, `${done.size} cached node(s)`);
        break;
      case "executing":
        if (current && current !== line.node) done.add(current);
        current = line.node ?? null;
        setRun((done.size / total) * 100, `Running ${name(current)}`);
        break;
      case "executed":
        if (line.node) done.add(line.node);
        setRun((done.size / total) * 100, `Finished ${name(line.node ?? null)}`);
        break;
      case "progress": {
        const frac = line.max ? (line.value ?? 0) / line.max : 0;
        setRun(
          ((done.size + frac) / total) * 100,
          `${name(line.node ?? current)} (node ${line.node ?? current}): step ${line.value}/${line.max}`,
        );
        break;
      }
      case "result": {
        const ok = line.status === "completed";
        if (ok) setRun(100, "Done");
        $("run-state").className = `run ${ok ? "ok" : "bad"}`;
        result.className = `result ${ok ? "ok" : "bad"}`;
        result.textContent = `${line.status}: ${line.message ?? ""}${line.error?.code ? ` (${line.error.code})` : ""}`;
        outputs.replaceChildren(
          ...(line.output ?? []).map((o, i) =>
            thumb({
              filename: o.filename,
              local: `/console/output/${encodeURIComponent(line.id)}/${i}`,
              url: o.url ?? null,
              kind:
                o.output_type === "text"
                  ? "text"
                  : /\.(png|jpe?g|webp|gif)$/i.test(o.filename)
                    ? "image"
                    : /\.(mp4|webm)$/i.test(o.filename)
                      ? "video"
                      : "other",
              text: o.text ?? null,
              upload_error: o.upload_error ?? null,
            }),
          ),
        );
        break;
      }
    }
  };

  try {
    const res = await fetch("/generate/stream", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ input: { workflow_json: workflow } }),
      signal: running.signal,
    });
    if (!res.ok || !res.body) {
      const body = (await res.json().catch(() => ({}))) as { error?: string; message?: string };
      throw new Error(`HTTP ${res.status}: ${body.error ?? body.message ?? res.statusText}`);
    }
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done: end } = await reader.read();
      if (end) break;
      buffer += value;
      let nl: number;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const raw = buffer.slice(0, nl).trim();
        buffer = buffer.slice(nl + 1);
        if (raw) handle(JSON.parse(raw) as StreamLine);
      }
    }
  } catch (err) {
    $("run-state").className = "run bad";
    result.className = "result bad";
    result.textContent = running.signal.aborted ? "Cancelled" : (err as Error).message;
  } finally {
    running = undefined;
    $<HTMLButtonElement>("run").disabled = false;
    $<HTMLButtonElement>("cancel").disabled = true;
  }
}

/** Indented when it parses, as it came when it does not (the run then says why). */
function pretty(text: string): string {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

async function loadExamples(): Promise<void> {
  const select = $<HTMLSelectElement>("example");
  const names = (await (await fetch("/console/workflows")).json()) as string[];
  for (const n of names)
    select.append(h("option", { value: n }, n.replace(/\.json$/, "").replace(/_/g, " ")));
  select.addEventListener("change", async () => {
    if (!select.value) return;
    const res = await fetch(`/console/workflows/${encodeURIComponent(select.value)}`);
    $<HTMLTextAreaElement>("workflow").value = pretty(await res.text());
  });
}

function setupForm(): void {
  const area = $<HTMLTextAreaElement>("workflow");
  $("try").addEventListener("submit", (e) => {
    e.preventDefault();
    if (!running) void runWorkflow(area.value);
  });
  $("cancel").addEventListener("click", () => running?.abort());
  $<HTMLInputElement>("file").addEventListener("change", async (e) => {
    const f = (e.target as HTMLInputElement).files?.[0];
    if (f) area.value = pretty(await f.text());
  });
  area.addEventListener("dragover", (e) => {
    e.preventDefault();
    area.classList.add("drop");
  });
  area.addEventListener("dragleave", () => area.classList.remove("drop"));
  area.addEventListener("drop", async (e) => {
    e.preventDefault();
    area.classList.remove("drop");
    const f = e.dataTransfer?.files[0];
    if (f) area.value = pretty(await f.text());
  });
  // Ctrl/Cmd+Enter runs from inside the text box.
  area.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $<HTMLFormElement>("try").requestSubmit();
  });
}

setupForm();
connect();
void loadExamples();
