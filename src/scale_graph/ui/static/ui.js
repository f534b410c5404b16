/* scale ui: renders each page from the JSON API (no framework, no network beyond this server).
   Markdown by marked, LaTeX by KaTeX, both vendored under /static/vendor; charts are SVG drawn here. */
"use strict";

const LIVE_MS = 1000; // a run in progress is re-read this often (the issue asks for <= 2 s behind)

// ---- small helpers ------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "html") node.innerHTML = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) if (child !== null && child !== undefined) node.append(child);
  return node;
}

async function api(path) {
  const reply = await fetch(path, { headers: { Accept: "application/json" } });
  const data = await reply.json().catch(() => ({ error: `HTTP ${reply.status}` }));
  if (!reply.ok) throw new Error(data.error || `HTTP ${reply.status}`);
  return data;
}

const num = (value, digits = 0) =>
  value === null || value === undefined ? "–" : Number(value).toLocaleString("en", { maximumFractionDigits: digits, minimumFractionDigits: digits });
const when = (epoch) => (epoch ? new Date(epoch * 1000).toLocaleString() : "–");
const runLink = (id, text) => h("a", { href: "/run?id=" + encodeURIComponent(id), class: "run-link" }, text || id);
const badge = (state, text) => h("span", { class: "badge state-" + String(state).replace(/\s+/g, "-") }, text || state);
const main = () => document.getElementById("main");
const params = () => new URLSearchParams(location.search);

function failed(error) {
  main().replaceChildren(h("h1", { class: "error" }, "Cannot show this page"), h("p", { class: "error-line" }, error.message));
}

// ---- Markdown + LaTeX -----------------------------------------------------------------------
const MATH = /\$\$([\s\S]+?)\$\$|\\\[([\s\S]+?)\\\]|\\\(([\s\S]+?)\\\)|(?<![\\$])\$(?!\s)([^$\n]+?)(?<!\s)\$|(\\boxed\{(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*\})/g;

function tex(source, display) {
  try {
    return katex.renderToString(source, { displayMode: display, throwOnError: false, output: "html" });
  } catch (error) {
    return h("code", {}, source).outerHTML;
  }
}

/** Model output as safe HTML: math set aside and typeset, the rest Markdown, raw HTML shown as text. */
function markdown(text) {
  if (!text) return "";
  const maths = [];
  const kept = String(text).replace(MATH, (whole, display, bracket, paren, inline, boxed) => {
    const shown = display !== undefined ? tex(display, true) : bracket !== undefined ? tex(bracket, true)
      : paren !== undefined ? tex(paren, false) : inline !== undefined ? tex(inline, false) : tex(boxed, false);
    maths.push(shown);
    return `@@MATH${maths.length - 1}@@`;
  });
  const html = marked.parse(kept, { async: false, gfm: true, breaks: true });
  const template = document.createElement("template");
  template.innerHTML = html.replace(/@@MATH(\d+)@@/g, (_, n) => `<span class="math" data-math="${n}"></span>`);
  sanitize(template.content);
  template.content.querySelectorAll("span.math").forEach((node) => { node.innerHTML = maths[Number(node.dataset.math)]; });
  const box = document.createElement("div");
  box.append(template.content);
  return box.innerHTML;
}

/** Model text may hold HTML: keep Markdown's own tags, drop scripts, handlers, remote images and javascript: links. */
function sanitize(root) {
  const allowed = new Set(["P", "EM", "STRONG", "CODE", "PRE", "UL", "OL", "LI", "BLOCKQUOTE", "H1", "H2", "H3", "H4",
    "H5", "H6", "A", "BR", "HR", "TABLE", "THEAD", "TBODY", "TR", "TH", "TD", "DEL", "SPAN"]);
  for (const node of [...root.querySelectorAll("*")]) {
    if (!allowed.has(node.tagName)) { node.replaceWith(document.createTextNode(node.outerHTML)); continue; }
    for (const attr of [...node.attributes]) {
      const keep = (attr.name === "href" && /^(https?:|#|\/)/i.test(attr.value)) || attr.name === "class" || attr.name === "data-math" || attr.name === "align";
      if (!keep) node.removeAttribute(attr.name);
    }
  }
}

const md = (text, cls) => h("div", { class: "md " + (cls || ""), html: markdown(text) });

// ---- charts ---------------------------------------------------------------------------------
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f"];

/** An SVG chart: series of points (x, y, label), lines or scatter, a clickable legend hides a series. */
function chart({ name, title, xLabel, yLabel, series, logX = false, lines = true, yMax = 100 }) {
  const width = 560, height = 320, left = 56, right = 16, top = 30, bottom = 48;
  const all = series.flatMap((one) => one.points).filter((p) => p.x !== null && p.y !== null);
  const fx = (x) => (logX ? Math.log2(x) : x);
  let [x0, x1] = [Math.min(...all.map((p) => fx(p.x))), Math.max(...all.map((p) => fx(p.x)))];
  if (!isFinite(x0)) [x0, x1] = [0, 1];
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  const pad = (x1 - x0) * 0.06;
  [x0, x1] = [x0 - pad, x1 + pad];
  const X = (x) => left + ((fx(x) - x0) / (x1 - x0)) * (width - left - right);
  const Y = (y) => top + (1 - y / yMax) * (height - top - bottom);
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", "data-chart": name, role: "img" });
  svg.append(s("text", { x: width / 2, y: 18, "text-anchor": "middle", class: "chart-title" }, title));
  for (let tick = 0; tick <= yMax; tick += yMax / 5) {
    svg.append(s("line", { x1: left, x2: width - right, y1: Y(tick), y2: Y(tick), class: "grid" }),
      s("text", { x: left - 6, y: Y(tick) + 4, "text-anchor": "end", class: "tick" }, num(tick)));
  }
  const distinct = [...new Set(all.map((p) => p.x))].sort((a, b) => a - b);
  // a sweep's own values are the ticks (τ 0.2, 0.5, 0.9); a scatter's may crowd: six even steps
  const xTicks = logX || (lines && distinct.length <= 8) ? distinct
    : Array.from({ length: 6 }, (_, i) => (logX ? 2 ** (x0 + pad + ((x1 - x0 - 2 * pad) * i) / 5) : x0 + pad + ((x1 - x0 - 2 * pad) * i) / 5));
  for (const tick of xTicks) {
    svg.append(s("text", { x: X(tick), y: height - bottom + 16, "text-anchor": "middle", class: "tick" },
      num(tick, Math.abs(x1 - x0) < 5 && !logX ? 2 : 0)));
  }
  svg.append(s("line", { x1: left, x2: left, y1: top, y2: height - bottom, class: "axis" }),
    s("line", { x1: left, x2: width - right, y1: height - bottom, y2: height - bottom, class: "axis" }),
    s("text", { x: (left + width - right) / 2, y: height - 8, "text-anchor": "middle", class: "label" }, xLabel),
    s("text", { x: 14, y: (top + height - bottom) / 2, transform: `rotate(-90 14 ${(top + height - bottom) / 2})`, "text-anchor": "middle", class: "label" }, yLabel));
  const legend = h("div", { class: "legend" });
  series.forEach((one, index) => {
    const color = COLORS[index % COLORS.length];
    const points = one.points.filter((p) => p.x !== null && p.y !== null).sort((a, b) => a.x - b.x);
    const group = s("g", { class: "series", "data-series": one.name });
    if (lines && points.length > 1) {
      group.append(s("polyline", { points: points.map((p) => `${X(p.x)},${Y(p.y)}`).join(" "), fill: "none", stroke: color,
        "stroke-width": 2, "stroke-dasharray": one.dashed ? "5 4" : null }));
    }
    for (const p of points) {
      group.append(s("circle", { cx: X(p.x), cy: Y(p.y), r: 5, fill: color, class: "point" },
        s("title", {}, `${one.name}: ${p.label ? p.label + " — " : ""}${xLabel} ${num(p.x, 2)}, ${yLabel} ${num(p.y, 2)}`)));
    }
    svg.append(group);
    legend.append(h("button", { class: "legend-item", type: "button", style: `--color:${color}`,
      onclick: (event) => { group.classList.toggle("hidden"); event.currentTarget.classList.toggle("off"); } }, one.name));
  });
  return h("figure", { class: "chart-box" }, svg, legend);
}

// ---- the runs list --------------------------------------------------------------------------
async function runsPage() {
  const state = { text: "", state: "", sort: "created", order: "desc", page: 1, per_page: 50 };
  for (const [key, value] of params()) if (key in state) state[key] = key === "page" || key === "per_page" ? Number(value) : value;
  const search = h("input", { type: "search", id: "filter", placeholder: "filter by run id or problem", value: state.text });
  const states = h("select", { id: "state-filter" });
  const counts = h("p", { id: "counts", class: "counts" });
  const table = h("table", { class: "runs", id: "runs-table" });
  const pager = h("nav", { class: "pager", id: "pager" });
  const picked = []; // run ids ticked for "compare": the two most recent ticks
  const compare = h("button", { id: "compare", type: "button", disabled: true,
    onclick: () => { location.href = `/diff?a=${encodeURIComponent(picked[0])}&b=${encodeURIComponent(picked[1])}`; } }, "compare 2 ticked runs");
  function tick(id, on) {
    const at = picked.indexOf(id);
    if (at >= 0) picked.splice(at, 1);
    if (on) picked.push(id);
    while (picked.length > 2) picked.shift();
    table.querySelectorAll("input.pick").forEach((box) => { box.checked = picked.includes(box.dataset.thread); });
    compare.disabled = picked.length !== 2;
  }
  main().replaceChildren(h("h1", {}, "Runs"), h("div", { class: "controls" }, search, states, compare), counts, table, pager);
  const columns = [["thread_id", "run"], ["status", "status"], ["problem", "problem"], [null, "answer"], [null, "τ"],
    [null, "tokens"], [null, "model"], ["created", "started"], [null, "fork of"]];
  let timer = null;

  async function load() {
    const query = new URLSearchParams(Object.entries(state).filter(([, v]) => v !== "" && v !== null));
    history.replaceState(null, "", "/runs?" + query);
    const data = await api("/api/runs?" + query);
    const total = Object.values(data.counts).reduce((a, b) => a + b, 0);
    counts.replaceChildren(h("span", { "data-count": "all" }, `${total} runs`), ": ",
      ...Object.entries(data.counts).flatMap(([name, count], i) => [i ? " · " : "", h("span", { "data-count": name }, `${count} ${name}`)]));
    states.replaceChildren(h("option", { value: "" }, `every status (${total})`),
      ...Object.entries(data.counts).map(([name, count]) => h("option", { value: name, selected: state.state === name }, `${name} (${count})`)));
    const head = h("tr", {}, h("th", {}, ""), columns.map(([key, label]) => h("th", key ? {
      class: "sortable" + (state.sort === key ? " sorted-" + state.order : ""), "data-sort": key,
      onclick: () => { state.order = state.sort === key && state.order === "desc" ? "asc" : "desc"; state.sort = key; state.page = 1; load(); },
    } : {}, label)));
    table.replaceChildren(h("thead", {}, head), h("tbody", {}, data.rows.map((row) => h("tr", { "data-thread": row.thread_id, "data-state": row.state },
      h("td", {}, h("input", { type: "checkbox", class: "pick", "data-thread": row.thread_id, checked: picked.includes(row.thread_id),
        title: "tick two runs to compare them", onchange: (event) => tick(row.thread_id, event.target.checked) })),
      h("td", {}, runLink(row.thread_id)), h("td", {}, badge(row.state, row.status)),
      h("td", { class: "problem", title: row.problem }, row.problem.length > 90 ? row.problem.slice(0, 90) + "…" : row.problem),
      h("td", { class: "answer" }, row.answer ?? "–"), h("td", {}, row.threshold ?? "–"), h("td", { class: "num" }, num(row.tokens)),
      h("td", {}, row.models || "–"), h("td", {}, when(row.created)),
      h("td", {}, row.fork_of ? runLink(row.fork_of) : "")))));
    if (!data.rows.length) table.append(h("tbody", {}, h("tr", {}, h("td", { colspan: columns.length + 1, class: "empty" }, "no run matches"))));
    pager.replaceChildren(
      h("button", { disabled: data.page <= 1, onclick: () => { state.page -= 1; load(); } }, "‹ newer"),
      h("span", { id: "page-of" }, ` page ${data.page} of ${data.pages} (${data.total} shown by the filter) `),
      h("button", { disabled: data.page >= data.pages, onclick: () => { state.page += 1; load(); } }, "older ›"));
    clearTimeout(timer);
    if (data.counts.running) timer = setTimeout(() => load().catch(failed), 2 * LIVE_MS);
  }
  let typing = null;
  search.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(() => { state.text = search.value; state.page = 1; load().catch(failed); }, 250); });
  states.addEventListener("change", () => { state.state = states.value; state.page = 1; load().catch(failed); });
  await load();
}

// ---- one run --------------------------------------------------------------------------------
function difficultyBar(difficulty, tau) {
  const width = 160, height = 18;
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, class: "difficulty-bar" });
  svg.append(s("rect", { x: 0, y: 4, width, height: 10, class: "track" }));
  if (difficulty !== null && difficulty !== undefined) {
    svg.append(s("rect", { x: 0, y: 4, width: difficulty * width, height: 10, class: difficulty > tau ? "fill hard" : "fill easy" }));
  }
  if (tau !== null && tau !== undefined) {
    svg.append(s("line", { x1: tau * width, x2: tau * width, y1: 0, y2: height, class: "tau" }, s("title", {}, `τ = ${tau}`)));
  }
  return svg;
}

function timeline(run) {
  const tau = run.params ? run.params.threshold : null;
  const rows = run.subproblems.map((step) => {
    const key = `step-${step.index}`;
    const flags = [step.forced_system ? `forced to System ${step.forced_system}` : null, step.forced_answer ? "forced answer" : null,
      step.reused ? "reused calls" : null, step.assessed_difficulty !== null && step.assessed_difficulty !== undefined ? `assessed ${num(step.assessed_difficulty, 2)}` : null].filter(Boolean);
    return h("li", { class: "step", "data-index": step.index + 1, "data-system": step.system ?? "", "data-difficulty": step.difficulty ?? "" },
      h("div", { class: "step-head" },
        h("span", { class: "step-no" }, `#${step.index + 1}`),
        h("span", { class: "difficulty" }, difficultyBar(step.difficulty, tau), h("span", { class: "difficulty-value" }, num(step.difficulty, 2))),
        h("span", { class: "system system-" + step.system }, step.system ? `System ${step.system}` : "–"),
        h("span", { class: "tokens", title: "prompt / completion / reasoning tokens" },
          `${num(step.prompt_tokens)} / ${num(step.completion_tokens)} / ${num(step.reasoning_tokens)} tok`),
        h("span", { class: "latency" }, step.latency_s !== null && step.latency_s !== undefined ? `${num(step.latency_s, 2)} s` : ""),
        h("span", { class: "result" }, md(step.result ? `$${step.result}$` : "–"))),
      h("div", { class: "step-text" }, md(step.text)),
      flags.length ? h("div", { class: "flags" }, flags.map((f) => h("span", { class: "flag" }, f))) : null,
      (step.warnings || []).map((w) => h("div", { class: "warning" }, "warning: " + w)),
      h("details", { "data-key": key + "-solution" }, h("summary", {}, "solution"), md(step.solution, "solution")),
      step.reasoning ? h("details", { "data-key": key + "-reasoning" }, h("summary", {}, `System 2 reasoning (${num(step.reasoning_tokens)} tokens)`), md(step.reasoning, "reasoning")) : null);
  });
  const pending = (run.planned_subproblems || []).slice(run.subproblems.length).map((text, i) =>
    h("li", { class: "step pending", "data-index": run.subproblems.length + i + 1 },
      h("div", { class: "step-head" }, h("span", { class: "step-no" }, `#${run.subproblems.length + i + 1}`), h("span", { class: "system" }, "not solved yet")),
      h("div", { class: "step-text" }, md(text))));
  return h("ol", { class: "timeline", id: "timeline" }, rows, pending);
}

function runBody(run) {
  const total = run.usage.total || {};
  const fork = run.fork_of;
  const chosen = run.selection ? run.selection.chosen : null;
  return [
    h("h1", {}, "Run ", h("code", { id: "run-id" }, run.thread_id), " ", h("span", { id: "status" }, badge(run.state, run.status)),
      h("span", { id: "live", class: "live" })),
    run.error ? h("p", { class: "error-line", id: "run-error" }, `failed: ${run.error} — `, h("code", {}, run.commands.resume), " continues it") : null,
    h("section", { class: "problem" }, h("h2", {}, "Problem"), md(run.problem)),
    h("section", { class: "answer" }, h("h2", {}, "Answer"), h("div", { id: "answer" }, run.answer === null || run.answer === undefined ? "–" : md(`$${run.answer}$`))),
    fork ? h("p", { class: "fork" }, "forked from ", runLink(fork.thread_id), ` at sub-problem ${fork.at ?? "–"}`,
      fork.system ? ` (System ${fork.system})` : fork.difficulty !== undefined ? ` (difficulty ${fork.difficulty})` : fork.subproblems ? " (edited decomposition)" : "",
      " · ", h("a", { href: `/diff?a=${encodeURIComponent(fork.thread_id)}&b=${encodeURIComponent(run.thread_id)}`, id: "diff-parent" }, "compare with its parent")) : null,
    run.children.length ? h("section", { class: "children" }, h("h2", {}, `Forks (${run.children.length})`),
      h("ul", { id: "children" }, run.children.map((c) => h("li", {}, runLink(c.thread_id), ` — ${c.change} · `,
        h("a", { href: `/diff?a=${encodeURIComponent(run.thread_id)}&b=${encodeURIComponent(c.thread_id)}` }, "diff"))))) : null,
    h("section", {}, h("h2", {}, `Sub-problems (τ = ${run.params ? run.params.threshold : "?"})`),
      h("p", { class: "usage" }, `${num(total.calls)} calls · ${num(total.prompt_tokens)} prompt + ${num(total.completion_tokens)} completion tokens (${num(total.reasoning_tokens)} reasoning) · ${num(run.generated_tokens)} generated for this run`),
      timeline(run)),
    (run.warnings || []).length ? h("section", {}, h("h2", {}, "Warnings"), h("ul", { class: "warnings" }, run.warnings.map((w) => h("li", {}, w)))) : null,
    run.candidates.length ? h("section", {}, h("h2", {}, `Candidate decompositions (k = ${run.candidates.length})`),
      h("ol", { class: "candidates", id: "candidates" }, run.candidates.map((c, i) => h("li", { class: i === chosen ? "chosen" : "" },
        i === chosen ? h("span", { class: "chosen-mark" }, `selected (${run.selection.method})`) : null,
        h("ol", {}, c.map((text) => h("li", {}, text))))))) : null,
    h("section", {}, h("h2", {}, "Equivalent commands"), h("pre", { class: "commands", id: "commands" }, Object.values(run.commands).join("\n"))),
    h("details", { "data-key": "parameters" }, h("summary", {}, "Parameters"), h("table", { class: "params" },
      h("tr", {}, h("th", {}, "parameter"), h("th", {}, "value"), h("th", {}, "where it came from")),
      run.parameters.map((p) => h("tr", { class: p.origin === "default" ? "default" : "set" }, h("td", {}, p.name), h("td", {}, JSON.stringify(p.value)),
        h("td", {}, p.origin === "default" ? "default" : `set for this run (default ${JSON.stringify(p.default)})`))))),
    h("details", { "data-key": "usage" }, h("summary", {}, "Tokens by stage"), h("table", { class: "params" },
      h("tr", {}, h("th", {}, "stage"), h("th", {}, "calls"), h("th", {}, "prompt"), h("th", {}, "completion"), h("th", {}, "reasoning")),
      Object.entries(run.usage.by_stage || {}).map(([stage, u]) => h("tr", {}, h("td", {}, stage), h("td", {}, num(u.calls)),
        h("td", {}, num(u.prompt_tokens)), h("td", {}, num(u.completion_tokens)), h("td", {}, num(u.reasoning_tokens)))))),
    h("details", { "data-key": "checkpoints" }, h("summary", {}, `${run.checkpoints.length} checkpoints`),
      h("ol", { class: "checkpoints" }, run.checkpoints.map((c) => h("li", {}, `step ${c.step} (${c.source}) → ${c.next.join(", ") || "end"}`)))),
  ];
}

async function runPage() {
  const id = params().get("id");
  let last = "";
  async function load() {
    const run = await api("/api/run?id=" + encodeURIComponent(id));
    const text = JSON.stringify(run);
    if (text !== last) { // re-draw only on change, keeping what the reader opened
      last = text;
      const open = new Set([...document.querySelectorAll("details[open]")].map((d) => d.dataset.key));
      document.title = `Run ${run.thread_id} · SCALE`;
      main().replaceChildren(...runBody(run).filter(Boolean));
      document.querySelectorAll("details").forEach((d) => { if (open.has(d.dataset.key)) d.open = true; });
    }
    const live = document.getElementById("live");
    if (run.state !== "done") {
      live.textContent = `live · read ${new Date().toLocaleTimeString()}`;
      setTimeout(() => load().catch(failed), LIVE_MS);
    } else live.textContent = "";
  }
  await load();
}

// ---- diff -----------------------------------------------------------------------------------
async function diffPage() {
  const a = params().get("a") || "", b = params().get("b") || "";
  const form = h("form", { class: "controls", method: "get", action: "/diff" },
    h("input", { name: "a", value: a, placeholder: "first run id", id: "diff-a" }),
    h("input", { name: "b", value: b, placeholder: "second run id", id: "diff-b" }), h("button", { type: "submit" }, "compare"));
  main().replaceChildren(h("h1", {}, "Compare two runs"), form);
  if (!a || !b) return;
  const d = await api(`/api/diff?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}`);
  const fields = ["text", "difficulty", "system", "result", "completion_tokens"];
  const cell = (side, name, differs) => {
    if (!side) return h("td", { class: "absent" }, "—");
    const value = side[name];
    return h("td", { class: differs.includes(name) ? "changed" : null },
      name === "text" ? md(value) : name === "difficulty" ? num(value, 2) : value ?? "–");
  };
  main().append(
    h("p", { id: "divergence", class: "divergence" }, d.first_divergence ? `first divergence: sub-problem ${d.first_divergence}` : "no divergence: the sub-problems agree"),
    h("p", {}, d.same_problem ? "same problem" : "different problems", " · ", d.same_decomposition ? "same decomposition" : "different decompositions"),
    h("table", { class: "diff", id: "diff-table" },
      h("tr", {}, h("th", {}, ""), h("th", { colspan: fields.length }, runLink(d.a), " ", badge(d.status.a.split(" ")[0], d.status.a)),
        h("th", { colspan: fields.length }, runLink(d.b), " ", badge(d.status.b.split(" ")[0], d.status.b))),
      h("tr", {}, h("th", {}, "#"), fields.map((f) => h("th", {}, f)), fields.map((f) => h("th", {}, f))),
      d.subproblems.map((row) => h("tr", { class: (row.differs.length ? "differs" : "") + (row.index === d.first_divergence ? " first-divergence" : ""), "data-index": row.index },
        h("td", {}, row.index), fields.map((f) => cell(row.a, f, row.differs)), fields.map((f) => cell(row.b, f, row.differs)))),
      h("tr", { class: "totals" }, h("td", {}, "answer"), h("td", { colspan: fields.length }, d.answer.a ?? "–"), h("td", { colspan: fields.length }, d.answer.b ?? "–")),
      h("tr", { class: "totals" }, h("td", {}, "tokens"), h("td", { colspan: fields.length }, num(d.completion_tokens.a)), h("td", { colspan: fields.length }, num(d.completion_tokens.b)))));
}

// ---- evaluations ----------------------------------------------------------------------------
function table(t, id) {
  return h("table", { class: "report", id },
    h("caption", {}, t.title), h("tr", {}, t.headers.map((x) => h("th", {}, x))), t.rows.map((row) => h("tr", {}, row.map((x) => h("td", {}, x)))));
}

function groupBy(items, key) {
  const groups = new Map();
  for (const item of items) { const k = key(item); if (!groups.has(k)) groups.set(k, []); groups.get(k).push(item); }
  return groups;
}

function evaluationCharts(metrics) {
  const graded = metrics.filter((m) => m.accuracy !== null);
  const charts = [];
  if (graded.length) {
    charts.push(chart({ name: "tokens", title: "Accuracy vs tokens per method", xLabel: "Tok", yLabel: "Acc (%)", lines: false,
      series: [...groupBy(graded, (m) => m.method)].map(([method, ms]) => ({ name: method, points: ms.map((m) => ({ x: m.tok, y: m.accuracy, label: `${m.label} · ${m.dataset}` })) })) }));
  }
  const scale = graded.filter((m) => m.method === "scale" && m.threshold !== null);
  if (new Set(scale.map((m) => m.threshold)).size > 1) {
    const series = [];
    for (const [dataset, ms] of groupBy(scale, (m) => m.dataset)) {
      series.push({ name: `${dataset} Acc`, points: ms.map((m) => ({ x: m.threshold, y: m.accuracy, label: m.name })) });
      series.push({ name: `${dataset} Hard %`, dashed: true, points: ms.map((m) => ({ x: m.threshold, y: m.hard, label: m.name })) });
    }
    charts.push(chart({ name: "threshold", title: "SCALE: accuracy and Hard % vs τ (Table 2)", xLabel: "τ", yLabel: "%", series }));
  }
  const budgeted = graded.filter((m) => m.budget !== null);
  if (new Set(budgeted.map((m) => m.budget)).size > 1) {
    charts.push(chart({ name: "budget", title: "Accuracy vs System 2 budget (Figure 2)", xLabel: "budget (tokens)", yLabel: "Acc (%)", logX: true,
      series: [...groupBy(budgeted, (m) => `${m.method} · ${m.dataset}`)].map(([name, ms]) => ({ name, points: ms.map((m) => ({ x: m.budget, y: m.accuracy, label: m.name })) })) }));
  }
  return charts;
}

function calibrationSection(found) {
  if (!found.length) return null;
  return h("section", { id: "calibration" }, h("h2", {}, "Routing calibration (scale calibrate)"), found.map((c) => c.error ? h("p", { class: "warning" }, c.error) : h("div", {},
    h("h3", {}, c.eval_run || c.folder),
    h("p", {}, `${c.paired} paired sub-problems of ${c.labelled} labelled · best τ for accuracy: ${c.best_tau_accuracy ?? "–"} · best τ for accuracy per token: ${c.best_tau_accuracy_per_token ?? "–"}`),
    chart({ name: "calibration", title: "Estimated accuracy and System 2 share vs τ", xLabel: "τ", yLabel: "%",
      series: [{ name: "accuracy", points: (c.taus || []).map((t) => ({ x: t.tau, y: t.accuracy === null ? null : 100 * t.accuracy })) },
        { name: "System 2 share", dashed: true, points: (c.taus || []).map((t) => ({ x: t.tau, y: t.system2_share === null ? null : 100 * t.system2_share })) }] }),
    h("table", { class: "report" }, h("tr", {}, ["difficulty", "n", "P(correct) S1", "P(correct) S2", "gain S2", "extra tokens S2"].map((x) => h("th", {}, x))),
      (c.bins || []).map((b) => h("tr", {}, h("td", {}, `${b.low}–${b.high}`), h("td", {}, b.n), h("td", {}, num(b.p_correct_s1, 2)),
        h("td", {}, num(b.p_correct_s2, 2)), h("td", {}, num(b.gain_s2, 2)), h("td", {}, num(b.extra_tokens_s2))))))));
}

async function evaluationsPage() {
  const data = await api("/api/evaluations");
  main().replaceChildren(h("h1", {}, "Evaluations"),
    h("section", {}, h("h2", {}, "Runs"), h("ul", { id: "eval-runs" }, data.runs.map((r) => h("li", {},
      h("a", { href: "/evaluation?name=" + encodeURIComponent(r.name) }, r.name), ` — ${r.method} on ${r.dataset}, ${r.samples} samples`)))),
    h("section", { class: "charts", id: "charts" }, evaluationCharts(data.metrics)),
    h("section", {}, data.tables.map((t, i) => table(t, "report-" + i))),
    h("ul", { class: "notes" }, data.notes.map((n) => h("li", {}, n))),
    calibrationSection(data.calibration));
}

async function evaluationPage() {
  const name = params().get("name");
  const g = await api("/api/evaluation?name=" + encodeURIComponent(name));
  const m = g.metrics;
  main().replaceChildren(h("h1", {}, "Evaluation ", h("code", {}, g.name)),
    h("p", {}, `${g.method} on ${g.dataset} · Acc ${num(m.accuracy, 2)} % · Tok ${num(m.tok)} · ${m.samples} samples of ${m.problems} problems · failed ${m.failed} · ungraded ${m.ungraded}`),
    h("p", { class: "legend-line" }, ["correct", "wrong", "ungraded", "failed"].map((o) => h("span", { class: "cell " + o }, o))),
    h("table", { class: "grid", id: "grid" }, h("tr", {}, h("th", {}, "problem"), g.samples.map((n) => h("th", {}, `sample ${n}`))),
      g.rows.map((row) => h("tr", {}, h("th", {}, row.problem_id), row.cells.map((c) => {
        if (!c) return h("td", { class: "cell missing" }, "");
        const tip = `answer ${c.answer ?? "–"} · gold ${c.gold} · ${c.tokens} tokens${c.error ? " · " + c.error : ""}`;
        const text = c.thread_id ? h("a", { href: "/run?id=" + encodeURIComponent(c.thread_id) }, c.outcome) : c.outcome;
        return h("td", { class: "cell " + c.outcome, title: tip, "data-outcome": c.outcome }, text);
      })))));
}

const PAGES = { runs: runsPage, run: runPage, diff: diffPage, evaluations: evaluationsPage, evaluation: evaluationPage };
if (typeof marked !== "undefined") {
  marked.use({ renderer: { html: (token) => (typeof token === "string" ? token : token.text).replace(/[<>&]/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;" })[c]) } });
}
const page = PAGES[document.body.dataset.page];
if (page) page().catch(failed);
