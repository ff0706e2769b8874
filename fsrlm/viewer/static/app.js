// fsRLM viewer: one run (live while it runs), or the runs of a folder.
//
// Everything shown comes from the run folder, which the agent controls: agent
// text, scripts, model answers, file names. The DOM is built with textContent
// and text nodes only; no data ever goes through innerHTML. The server's
// Content-Security-Policy allows no inline script either.
"use strict";

// -- DOM helpers -------------------------------------------------------------------------

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key === "onclick") node.addEventListener("click", value);
    else if (key === "href") node.setAttribute("href", value);
    else node.setAttribute(key, String(value));
  }
  append(node, children);
  return node;
}

function append(node, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function replaceChildren(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

function clip(text, n) {
  text = String(text ?? "");
  return text.length > n ? text.slice(0, n) + " …" : text;
}

function oneLine(text, n) {
  return clip(String(text ?? "").replace(/\s+/g, " ").trim(), n);
}

// Paths inside the run folder, shown relative to it (host path, or /workspace in a container).
function relative(text) {
  text = String(text ?? "");
  for (const root of [view.snapshot && view.snapshot.workspace_path, "/workspace"]) {
    if (root) text = text.split(root + "/").join("");
  }
  return text;
}

function dollars(x) {
  x = Number(x || 0);
  return "$" + (x === 0 ? "0" : x < 0.01 ? x.toFixed(5) : x.toFixed(4));
}

function num(x) {
  return Number(x || 0).toLocaleString("en-US");
}

function seconds(x) {
  x = Number(x || 0);
  return x < 60 ? x.toFixed(1) + " s" : Math.floor(x / 60) + " min " + Math.round(x % 60) + " s";
}

function badge(value, extra) {
  const cls = String(value || "").replace(/[^a-z_]/g, "");
  return el("span", { class: "badge " + cls + (extra ? " " + extra : ""), text: value });
}

async function getJSON(url) {
  const response = await fetch(url, { headers: { accept: "application/json" }, cache: "no-store" });
  if (!response.ok) throw new Error(url + ": HTTP " + response.status);
  return response.json();
}

// -- a tiny Python highlighter -------------------------------------------------------------

const PY_KEYWORDS = new Set(("and as assert async await break class continue def del elif else except " +
  "finally for from global if import in is lambda nonlocal not or pass raise return try while with yield " +
  "match case").split(" "));
const PY_CONSTANTS = new Set(["True", "False", "None"]);
const PY_BUILTINS = new Set(("print len range open str int float dict list set tuple sorted enumerate zip " +
  "map filter sum min max any all isinstance json re os sys super type abs round repr bool bytes " +
  "Exception ValueError KeyError self").split(" "));
const PY_TOKEN = new RegExp([
  "(#[^\\n]*)",                                                          // 1 comment
  "((?:[rRbBuUfF]{1,2})?(?:\"\"\"[\\s\\S]*?(?:\"\"\"|$)|'''[\\s\\S]*?(?:'''|$)|" +
    "\"(?:\\\\.|[^\"\\\\\\n])*\"?|'(?:\\\\.|[^'\\\\\\n])*'?))",          // 2 string
  "(@[A-Za-z_][\\w.]*)",                                                 // 3 decorator
  "(\\b0[xXoObB][\\da-fA-F_]+\\b|\\b\\d[\\d_]*(?:\\.\\d*)?(?:[eE][+-]?\\d+)?j?\\b)", // 4 number
  "([A-Za-z_]\\w*)",                                                     // 5 name
].join("|"), "g");

function highlightPython(code) {
  const out = document.createDocumentFragment();
  let last = 0;
  let previousName = "";
  for (const m of code.matchAll(PY_TOKEN)) {
    if (m.index > last) out.append(code.slice(last, m.index));
    let cls = null;
    if (m[1] !== undefined) cls = "py-com";
    else if (m[2] !== undefined) cls = "py-str";
    else if (m[3] !== undefined) cls = "py-dec";
    else if (m[4] !== undefined) cls = "py-num";
    else {
      const name = m[5];
      if (PY_KEYWORDS.has(name)) cls = "py-kw";
      else if (PY_CONSTANTS.has(name)) cls = "py-const";
      else if (previousName === "def" || previousName === "class") cls = "py-fn";
      else if (PY_BUILTINS.has(name)) cls = "py-bi";
      previousName = name;
    }
    out.append(cls ? el("span", { class: cls, text: m[0] }) : m[0]);
    last = m.index + m[0].length;
  }
  if (last < code.length) out.append(code.slice(last));
  return out;
}

function codeBox(code) {
  const lines = code.split("\n").length - (code.endsWith("\n") ? 1 : 0);
  const gutter = Array.from({ length: Math.max(lines, 1) }, (_, i) => i + 1).join("\n");
  return el("div", { class: "codebox" },
    el("pre", { class: "gutter", text: gutter, "aria-hidden": "true" }),
    el("pre", { class: "code" }, highlightPython(code)));
}

// -- the folder of runs ---------------------------------------------------------------------

function renderRunList(info) {
  document.title = "fsRLM runs";
  replaceChildren(document.getElementById("title"), "runs in this folder");
  document.getElementById("status").hidden = true;
  const rows = info.runs.map((run) => el("tr", { class: "run" },
    el("td", { class: "mono" }, el("a", { href: "run/" + encodeURIComponent(run.name) + "/", text: run.run_id })),
    el("td", { class: "q", text: oneLine(run.question || "—", 200) }),
    el("td", {}, badge(run.status)),
    el("td", { class: "num", text: dollars(run.cost_usd) }),
    el("td", { class: "num", text: run.started ? new Date(run.started * 1000).toLocaleString() : "" }),
  ));
  const panel = el("section", { class: "panel", id: "runs" },
    el("h2", {}, "Runs", el("span", { class: "count", text: info.runs.length + " runs" })),
    info.runs.length
      ? el("div", { class: "table-wrap" }, el("table", { class: "runs" },
          el("thead", {}, el("tr", {}, ["run", "question", "status", "cost", "started"].map(
            (h, i) => el("th", { class: i >= 3 ? "num" : null, text: h })))),
          el("tbody", {}, rows)))
      : el("p", { class: "muted", text: "No run folders (subfolders with state/job.json) here yet." }));
  replaceChildren(document.getElementById("main"), panel);
}

// -- one run ----------------------------------------------------------------------------------

const SECTIONS = [
  ["totals", "Totals"], ["question", "Question"], ["answer", "Answer"], ["timeline", "Timeline"],
  ["scripts", "Scripts"], ["subcalls", "Subcalls"], ["nested", "Nested runs"], ["artifacts", "Artifacts"],
];

const view = {
  snapshot: null,
  seen: new Set(),      // event seqs already on the timeline
  t0: null,             // time of the first event
  openCalls: new Set(), // subcall rows the user expanded
  openScripts: new Map(),  // script path -> open, once the user toggled it
  rendered: {},          // panel -> the data it shows, so a refresh redraws only what changed
  refreshTimer: null,
  source: null,
};

function panel(id, title) {
  const count = el("span", { class: "count" });
  const body = el("div", { class: "body" });
  const section = el("section", { class: "panel", id }, el("h2", {}, title, count), body);
  return { section, count, body };
}

function buildRunPage() {
  const main = document.getElementById("main");
  const panels = {};
  for (const [id, title] of SECTIONS) panels[id] = panel(id, title);
  replaceChildren(main,
    panels.totals.section,
    el("div", { class: "pair" }, panels.question.section, panels.answer.section),
    SECTIONS.slice(3).map(([id]) => panels[id].section));
  replaceChildren(document.getElementById("nav"),
    SECTIONS.map(([id, title]) => el("a", { href: "#" + id, text: title })));

  const showCalls = el("input", { type: "checkbox", id: "show-calls" });
  const list = el("ol", { class: "timeline hide-calls", id: "events" });
  showCalls.addEventListener("change", () => list.classList.toggle("hide-calls", !showCalls.checked));
  append(panels.timeline.body,
    el("div", { class: "timeline-tools" },
      el("label", {}, showCalls, " show model calls (root and subcalls) on the timeline")),
    list);
  view.panels = panels;
  view.timeline = list;
}

function renderSnapshot(snap) {
  view.snapshot = snap;
  document.title = "fsRLM · " + snap.run_id;
  replaceChildren(document.getElementById("title"), snap.run_id);
  const status = document.getElementById("status");
  status.hidden = false;
  status.className = "badge " + String(snap.status).replace(/[^a-z_]/g, "");
  status.textContent = snap.status;
  for (const event of snap.events) addEvent(event, false);
  const parts = {
    totals: [renderTotals, [snap.totals, snap.totals_source, snap.job, snap.errors]],
    question: [renderQuestion, [snap.input]],
    answer: [renderAnswer, [snap.answer, snap.status]],
    scripts: [renderScripts, [snap.scripts]],
    subcalls: [renderSubcalls, [snap.subcalls]],
    nested: [renderNested, [snap.nested]],
    artifacts: [renderArtifacts, [snap.artifacts, snap.artifact_count]],
  };
  for (const [name, [render, data]] of Object.entries(parts)) {
    const key = JSON.stringify(data);
    if (view.rendered[name] === key) continue;
    view.rendered[name] = key;
    render(snap);
  }
}

function card(key, value, sub) {
  return el("div", { class: "card" }, el("div", { class: "k", text: key }), el("div", { class: "v", text: value }),
    sub ? el("div", { class: "s", text: sub }) : null);
}

function renderTotals(snap) {
  const t = snap.totals;
  const p = view.panels.totals;
  p.count.textContent = snap.totals_source === "result" ? "from the run's result" : "so far (from the audit log)";
  const job = snap.job || {};
  replaceChildren(p.body,
    el("div", { class: "cards" },
      card("total cost", dollars(t.total_cost_usd), "root " + dollars(t.root_cost_usd) + " · subcalls " + dollars(t.subcall_cost_usd)),
      card("turns", num(t.turns), num(t.root_calls) + " root calls"),
      card("subcalls", num(t.subcalls + t.subcalls_cached),
        num(t.subcalls_cached) + " cached · " + num(t.subcalls_refused) + " refused · " + num(t.subcalls_failed) + " failed"),
      card("cache hit rate", Math.round((t.cache_hit_rate || 0) * 100) + "%"),
      card("root tokens", num(t.root_input_tokens + t.root_output_tokens),
        num(t.root_input_tokens) + " in · " + num(t.root_output_tokens) + " out"),
      card("subcall tokens", num(t.subcall_input_tokens + t.subcall_output_tokens),
        num(t.subcall_input_tokens) + " in · " + num(t.subcall_output_tokens) + " out"),
      card("scripts", num(t.scripts), t.nested_runs ? num(t.nested_runs) + " nested runs" : null),
      card("wall time", seconds(t.wall_seconds)),
    ),
    el("p", { class: "muted" },
      "root model ", el("code", { text: job.root_model || "?" }), " · submodel ", el("code", { text: job.submodel || "?" }),
      " · executor ", el("code", { text: job.executor || "?" }),
      snap.sandbox ? [" · kernel ", el("code", { id: "kernel", text: kernelLabel(snap.sandbox) })] : null,
      job.depth ? " · depth " + job.depth : null),
    snap.errors && snap.errors.length
      ? el("ul", { class: "errors" }, snap.errors.map((e) => el("li", { text: e }))) : null,
  );
}

// As SandboxInfo.label() in executors/base.py.
function kernelLabel(s) {
  const parts = [s.runtime, s.platform].filter((x) => x);
  if (s.kernel === "gvisor") return "gVisor (" + parts.join(", ") + ")";
  if (s.kernel === "other") return "runtime " + (s.runtime || "?");
  return s.runtime ? "host kernel (" + s.runtime + ")" : "host kernel, no sandbox";
}

function renderQuestion(snap) {
  const inp = snap.input || {};
  const p = view.panels.question;
  p.count.textContent = inp.size_bytes != null ? "input: " + num(inp.size_bytes) + " bytes" : "";
  replaceChildren(p.body,
    inp.question ? el("pre", { class: "text question", text: inp.question })
      : el("p", { class: "muted", text: "No separate question (it is in the input)." }),
    inp.system ? [el("div", { class: "label", text: "system prompt" }), el("pre", { class: "text", text: inp.system })] : null,
    el("details", {},
      el("summary", { text: "input preview" + (inp.from_messages ? " (transcript of the messages)" : "") + " — input/prompt.md" }),
      el("pre", { class: "text", text: inp.preview ?? "(no input/prompt.md)" })),
  );
}

function renderAnswer(snap) {
  const p = view.panels.answer;
  p.count.textContent = snap.answer != null ? "output/answer.md" : "";
  replaceChildren(p.body, snap.answer != null
    ? el("pre", { class: "text answer", id: "answer-text", text: snap.answer })
    : el("p", { class: "muted", text: snap.status === "unfinished" ? "No answer yet." : "The run wrote no answer." }));
}

function eventBody(e) {
  switch (e.kind) {
    case "run_started": {
      const d = e.data || {};
      return ["run started", d.resumed ? " (resumed)" : "", d.executor ? " · executor " + d.executor : "",
        d.root_model ? " · " + d.root_model : ""].join("");
    }
    case "agent_text":
      return el("div", { class: "agent", text: e.text || "" });
    case "tool_use":
      return [el("span", { class: "tool", text: e.tool || "tool" }),
        e.detail ? el("code", { text: clip(relative(e.detail), 600) }) : null];
    case "script_started":
      return ["runs ", el("code", { text: relative(e.detail) })];
    case "script_finished":
      return [el("code", { text: relative(e.detail) }), e.is_error ? el("span", { class: "err", text: " failed" }) : " finished",
        e.text ? el("details", {}, el("summary", { text: "output" }), el("pre", { class: "text", text: e.text })) : null];
    case "subcall": {
      const r = e.record || {};
      const tail = r.status === "refused" ? " · " + (r.limit || r.error || "") : "";
      return [badge(r.status), " ", r.kind, " · ", el("code", { text: r.script || "" }), " · ", r.model || "",
        " · ", num(r.input_tokens), "/", num(r.output_tokens), " tok · ", dollars(r.cost_usd),
        " · ", Math.round(r.latency_ms || 0) + " ms", tail];
    }
    case "artifact":
      return el("code", { text: clip(JSON.stringify(e.data), 400) });
    case "result": {
      const d = e.data || {};
      const m = d.metrics || {};
      return [badge(d.stop_reason || "?"), " run ended · ", dollars(m.total_cost_usd), " · ", seconds(m.wall_seconds)];
    }
    default:
      return e.kind;
  }
}

function addEvent(e, fresh) {
  if (view.seen.has(e.seq)) return;
  view.seen.add(e.seq);
  if (view.t0 === null) view.t0 = e.ts;
  const modelCall = e.kind === "subcall";
  const item = el("li", { class: "ev " + e.kind + (modelCall ? " model-call" : "") + (fresh ? " fresh" : ""), "data-seq": e.seq },
    el("span", { class: "t", text: "+" + (e.ts - view.t0).toFixed(1) + "s" }),
    el("span", { class: "kind", text: e.kind === "subcall" && e.record ? e.record.kind + " call" : e.kind.replace("_", " ") }),
    el("div", { class: "body" }, eventBody(e)));
  // keep the timeline in line order, whatever order snapshot and stream deliver
  let next = null;
  for (const li of view.timeline.children) {
    if (Number(li.dataset.seq) > e.seq) { next = li; break; }
  }
  view.timeline.insertBefore(item, next);
  view.panels.timeline.count.textContent = view.timeline.children.length + " events";
}

function renderScripts(snap) {
  const p = view.panels.scripts;
  p.count.textContent = snap.scripts.length + " in scratch/scripts/";
  replaceChildren(p.body, snap.scripts.length ? snap.scripts.map((s) => {
    const open = view.openScripts.has(s.path) ? view.openScripts.get(s.path) : snap.scripts.length <= 3;
    const box = el("details", { class: "script", open },
      el("summary", { text: s.path + "  ·  " + s.text.split("\n").length + " lines" }), codeBox(s.text));
    box.addEventListener("toggle", () => view.openScripts.set(s.path, box.open));
    return box;
  }) : el("p", { class: "muted", text: "No scripts yet." }));
}

function subcallDetail(c) {
  return el("tr", { class: "detail" }, el("td", { colspan: 10 },
    el("div", { class: "cols" },
      el("div", {}, el("div", { class: "label", text: "prompt (start of the last user message)" }),
        el("pre", { class: "text", text: c.prompt_preview ?? "(not recorded)" })),
      el("div", {}, el("div", { class: "label", text: "answer" + (c.cache_key ? " (cache/llm/" + c.cache_key.slice(0, 12) + "….json)" : "") }),
        el("pre", { class: "text", text: c.answer ?? (c.error ? "(" + c.error + ")" : "(not in the cache mirror)") }))),
    c.error ? el("p", { class: "err", text: (c.limit ? c.limit + ": " : "") + c.error }) : null));
}

function renderSubcalls(snap) {
  const p = view.panels.subcalls;
  const calls = snap.subcalls;
  const cached = calls.filter((c) => c.status === "cached").length;
  p.count.textContent = calls.length + " calls · " + cached + " cached · click a row for prompt and answer";
  if (!calls.length) {
    replaceChildren(p.body, el("p", { class: "muted", text: "No subcalls yet." }));
    return;
  }
  const heads = ["#", "script", "model", "status", "in tok", "out tok", "cost", "latency", "prompt", "answer"];
  const body = el("tbody");
  calls.forEach((c, i) => {
    const row = el("tr", { class: "call" + (view.openCalls.has(c.seq) ? " open" : ""), "data-seq": c.seq },
      el("td", { class: "num", text: i + 1 }),
      el("td", { class: "mono clip", text: c.script, title: c.script }),
      el("td", { class: "mono", text: c.model }),
      el("td", {}, badge(c.status), c.kind !== "subcall" ? " " + c.kind : null),
      el("td", { class: "num", text: num(c.input_tokens) }),
      el("td", { class: "num", text: num(c.output_tokens) }),
      el("td", { class: "num", text: dollars(c.cost_usd) }),
      el("td", { class: "num", text: Math.round(c.latency_ms || 0) + " ms" }),
      el("td", { class: "clip", text: oneLine(c.prompt_preview ?? "", 80) }),
      el("td", { class: "clip", text: oneLine(c.answer ?? c.error ?? "", 80) }));
    body.append(row);
    if (view.openCalls.has(c.seq)) body.append(subcallDetail(c));
    row.addEventListener("click", () => {
      if (view.openCalls.has(c.seq)) {
        view.openCalls.delete(c.seq);
        row.classList.remove("open");
        if (row.nextElementSibling && row.nextElementSibling.classList.contains("detail")) row.nextElementSibling.remove();
      } else {
        view.openCalls.add(c.seq);
        row.classList.add("open");
        row.after(subcallDetail(c));
      }
    });
  });
  replaceChildren(p.body, el("div", { class: "table-wrap" }, el("table", { class: "subcalls" },
    el("thead", {}, el("tr", {}, heads.map((h, i) => el("th", { class: i >= 4 && i <= 7 || i === 0 ? "num" : null, text: h })))),
    body)));
}

// Runs started by rlm_query: their folders are in <run>.nested/, served under nested/<name>/.
function renderNested(snap) {
  const p = view.panels.nested;
  const runs = snap.nested || [];
  p.count.textContent = runs.length + " runs";
  if (!runs.length) {
    replaceChildren(p.body, el("p", { class: "muted", text: "No nested runs (rlm_query)." }));
    return;
  }
  replaceChildren(p.body, el("div", { class: "table-wrap" }, el("table", { class: "runs" },
    el("thead", {}, el("tr", {}, ["run", "question", "status", "cost"].map(
      (h, i) => el("th", { class: i >= 3 ? "num" : null, text: h })))),
    el("tbody", {}, runs.map((run) => el("tr", { class: "run" },
      el("td", { class: "mono" }, el("a", { href: "nested/" + encodeURIComponent(run.name) + "/", text: run.run_id })),
      el("td", { class: "q", text: oneLine(run.question || "—", 200) }),
      el("td", {}, badge(run.status)),
      el("td", { class: "num", text: dollars(run.cost_usd) }),
    ))))));
}

function renderArtifacts(snap) {
  const p = view.panels.artifacts;
  const items = snap.artifacts;
  p.count.textContent = snap.artifact_count + " in state/artifacts.jsonl" +
    (snap.artifact_count > items.length ? " (first " + items.length + " shown)" : "");
  if (!items.length) {
    replaceChildren(p.body, el("p", { class: "muted", text: "No artifacts." }));
    return;
  }
  const keys = [];
  for (const item of items.slice(0, 200)) for (const k of Object.keys(item)) if (!keys.includes(k) && keys.length < 8) keys.push(k);
  const cell = (v) => (v === undefined ? "" : typeof v === "string" ? v : JSON.stringify(v));
  replaceChildren(p.body, el("div", { class: "table-wrap" }, el("table", { class: "artifacts" },
    el("thead", {}, el("tr", {}, keys.map((k) => el("th", { text: k })))),
    el("tbody", {}, items.map((item) => el("tr", {}, keys.map((k) => el("td", { class: "clip", text: clip(cell(item[k]), 300), title: clip(cell(item[k]), 2000) }))))))));
}

// -- live updates -------------------------------------------------------------------------------

function setLive(on) {
  const live = document.getElementById("live");
  live.hidden = false;
  live.className = "live" + (on ? "" : " off");
  live.textContent = on ? "live" : "reconnecting…";
}

function scheduleRefresh(delay) {
  if (view.refreshTimer !== null) return;
  view.refreshTimer = setTimeout(async () => {
    view.refreshTimer = null;
    try {
      renderSnapshot(await getJSON("api/run"));
    } catch (err) {
      console.warn("refresh failed", err);
    }
  }, delay);
}

function connect(after) {
  if (view.source) view.source.close();
  const source = new EventSource("api/events?after=" + encodeURIComponent(after));
  view.source = source;
  source.onopen = () => setLive(true);
  source.onerror = () => setLive(false);
  source.onmessage = (message) => {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;
    }
    addEvent(event, true);
    if (event.kind !== "agent_text") scheduleRefresh(event.kind === "result" ? 100 : 1000);
  };
  source.addEventListener("reset", () => {
    // the events file was replaced: start over from a fresh snapshot
    view.seen.clear();
    view.t0 = null;
    view.timeline.replaceChildren();
    view.rendered = {};
    startRun();
  });
}

async function startRun() {
  if (!view.panels) buildRunPage();
  const snap = await getJSON("api/run");
  renderSnapshot(snap);
  connect(snap.event_count);
}

async function main() {
  try {
    if (!/\/run\/[^/]+\/$/.test(location.pathname)) {
      const info = await getJSON("api/runs");
      if (info.mode === "folder") {
        renderRunList(info);
        setInterval(async () => {  // runs appear and finish while the page is open
          try {
            renderRunList(await getJSON("api/runs"));
          } catch (err) {
            console.warn("refresh failed", err);
          }
        }, 5000);
        return;
      }
    }
    await startRun();
  } catch (err) {
    replaceChildren(document.getElementById("main"),
      el("section", { class: "panel" }, el("p", { class: "err", text: "Could not load the run: " + err.message })));
  }
}

main();
