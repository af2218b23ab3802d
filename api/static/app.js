// Feature Atlas explorer: a small static app over the JSON API. State lives in the URL hash, so every
// view is a shareable link: #/stack/<stack>?stat=..., #/pair/<a>/<b>, #/feature/<sae>/<i>?edges=all,
// #/widths/<sae>/<i>, #/orphans/<sae>.
"use strict";

const view = document.getElementById("view");
const enc = encodeURIComponent;

async function api(path) {
  const r = await fetch(path);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) el.setAttribute(k, v);
  }
  for (const c of children.flat()) el.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return el;
}

const link = (href, text, attrs = {}) => h("a", { href, ...attrs }, text);
const num = x => Number(x).toLocaleString("en-US");  // 1,200,000: counts of tokens and samples read at a glance
const featureHref = (sae, i) => `#/feature/${enc(sae)}/${i}`;
const fmt = (x, d = 3) => (x === null || x === undefined ? "–"
  : typeof x === "number" ? (Number.isInteger(x) ? String(x) : Math.abs(x) < 0.01 && x !== 0 ? x.toExponential(2) : x.toFixed(d)) : x);

function sortableTable(columns, rows) {
  // columns: [{key, label, render?}]; click a header to sort by it
  let sortKey = null, asc = true;
  const table = h("table");
  const draw = () => {
    const sorted = sortKey === null ? rows : [...rows].sort((a, b) =>
      (a[sortKey] > b[sortKey] ? 1 : a[sortKey] < b[sortKey] ? -1 : 0) * (asc ? 1 : -1));
    table.replaceChildren(
      h("tr", {}, columns.map(c => h("th", { onclick: () => { asc = sortKey === c.key ? !asc : true; sortKey = c.key; draw(); } }, c.label))),
      ...sorted.map(r => h("tr", {}, columns.map(c => h("td", {}, c.render ? c.render(r) : fmt(r[c.key]))))));
  };
  draw();
  return table;
}

// ---- home: what is served (stacks grouped by model) and what a running build is still adding ---------
let buildTimer = null;

async function home() {
  const [stacks, build] = await Promise.all([api("/api/stacks"), api("/api/build")]);
  const byModel = {};
  for (const s of stacks) (byModel[s.model] ||= []).push(s);
  view.replaceChildren(buildPanel(build), h("h1", {}, "SAE stacks"),
    ...Object.entries(byModel).map(([model, list]) => h("section", {},
      h("h2", {}, model),
      sortableTable([
        { key: "stack", label: "stack", render: s => link(`#/stack/${enc(s.stack)}`, s.stack, { class: "stack-link" }) },
        { key: "site", label: "site" }, { key: "d_sae", label: "width" }, { key: "arch", label: "arch" },
        { key: "seed", label: "seed" }, { key: "dataset", label: "dataset" }, { key: "n_saes", label: "SAEs" },
        { key: "first_layer", label: "layers", render: s => `${s.first_layer}–${s.last_layer}` },
      ], list))));
  clearTimeout(buildTimer);
  if (build.state === "running")  // each SAE and pair is served as it lands: redraw while the build runs
    buildTimer = setTimeout(() => { if (location.hash === "" || location.hash === "#/") home().catch(() => {}); }, 2000);
}

function buildPanel(b) {
  // GET /api/build: the steps of `atlas demo` / `atlas minilm` writing into this atlas (none: no build here)
  if (b.state === "none") return "";
  const title = { running: "Still building (this page refreshes every 2 s)", done: "Build finished",
                  stopped: "Build stopped", failed: "Build failed" }[b.state] || b.state;
  const row = s => h("tr", { "data-step": s.name },
    h("td", {}, s.name),
    h("td", {}, s.total === null ? h("span", { class: "muted" }, "coming")
      : s.total === 0 ? h("span", { class: "muted" }, "none in this plan")
      : h("progress", { value: s.done, max: s.total })),
    h("td", { class: "count" }, s.total ? `${num(s.done)} / ${num(s.total)}${s.unit ? " " + s.unit : ""}` : ""),
    h("td", { class: "muted" }, s.item || ""));
  return h("section", { id: "build", "data-state": b.state },
    h("h2", {}, title),
    b.message ? h("p", { class: b.state === "failed" ? "error" : "muted" }, b.message) : "",
    h("table", {}, b.steps.map(row)));
}

// ---- stack: heatmap of layer pairs + births/deaths chart ------------------------------------------
async function stackPage(stack, params) {
  const method = params.get("method") || "decoder_cos", stat = params.get("stat") || "matched_frac";
  const [matrix, pairs, flow] = await Promise.all([
    api(`/api/stacks/${enc(stack)}/matrix?method=${method}&stat=${stat}`),
    api(`/api/layer-pairs?stack=${enc(stack)}&method=${method}&permutation_only=true`),
    api(`/api/stacks/${enc(stack)}/births-deaths?method=${method}`),
  ]);
  const saes = (await api(`/api/saes?stack=${enc(stack)}`)).items;
  const idOf = Object.fromEntries(saes.map(s => [s.layer, s.sae_id]));
  const perm = new Set(pairs.items.map(p => `${p.layer_a}-${p.layer_b}`));
  const select = h("select", { id: "stat", onchange: e => { location.hash = `#/stack/${enc(stack)}?method=${method}&stat=${e.target.value}`; } },
    ["matched_frac", "mean_score", "median_score", "identity_frac", "frac_at_min_score"].map(s => {
      const o = h("option", { value: s }, s); if (s === stat) o.selected = true; return o; }));
  view.replaceChildren(
    h("h1", {}, `Stack ${stack}`),
    h("p", {}, "Layer × layer ", select, ` (${method}). Outlined cells: permutation-only pairs (≥ 90% of features matched with score ≥ 0.9). Click a cell for its matches.`),
    heatmap(matrix, perm, (a, b) => { location.hash = `#/pair/${enc(idOf[a])}/${enc(idOf[b])}?method=${method}`; }),
    h("p", { id: "perm-count" }, `${perm.size} permutation-only pairs`),
    h("h2", {}, "Births and deaths per layer"), barChart(flow));
}

function heatmap(m, perm, onCell) {
  const n = m.layers.length, cell = Math.max(18, Math.min(44, Math.floor(620 / Math.max(n, 1)))), pad = 34;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "heatmap");
  svg.setAttribute("width", pad + n * cell + 10); svg.setAttribute("height", pad + n * cell + 10);
  const vals = m.values.flat().filter(v => v !== null);
  const lo = Math.min(...vals, 1), hi = Math.max(...vals, 0);
  // light (low) to dark blue (high) over the values present
  const colour = v => { const t = hi > lo ? (v - lo) / (hi - lo) : 1; return `hsl(212, 75%, ${92 - 55 * t}%)`; };
  m.layers.forEach((layer, i) => {
    for (const [x, y, anchor] of [[pad + i * cell + cell / 2, pad - 8, "middle"], [pad - 6, pad + i * cell + cell / 2 + 4, "end"]]) {
      const t = document.createElementNS(ns, "text"); t.setAttribute("x", x); t.setAttribute("y", y);
      t.setAttribute("text-anchor", anchor); t.textContent = layer; svg.append(t);
    }
  });
  m.values.forEach((row, i) => row.forEach((v, j) => {
    if (v === null) return;
    const a = Math.min(m.layers[i], m.layers[j]), b = Math.max(m.layers[i], m.layers[j]);
    const r = document.createElementNS(ns, "rect");
    r.setAttribute("x", pad + j * cell); r.setAttribute("y", pad + i * cell);
    r.setAttribute("width", cell - 1); r.setAttribute("height", cell - 1); r.setAttribute("fill", colour(v));
    r.setAttribute("data-pair", `${a}-${b}`);
    if (perm.has(`${a}-${b}`)) r.setAttribute("class", "perm");
    const title = document.createElementNS(ns, "title"); title.textContent = `layers ${a} → ${b}: ${v.toFixed(3)}`;
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", pad + j * cell + cell / 2); label.setAttribute("y", pad + i * cell + cell / 2 + 4);
    label.setAttribute("text-anchor", "middle"); label.setAttribute("pointer-events", "none");
    label.setAttribute("fill", (hi > lo ? (v - lo) / (hi - lo) : 1) > 0.5 ? "#fff" : "#111");
    label.textContent = cell >= 34 ? v.toFixed(2) : "";
    r.append(title); r.addEventListener("click", () => onCell(a, b)); svg.append(r, label);
  }));
  return svg;
}

function barChart(flow) {
  // each bar's count sits above it, inside the drawing: a top margin for the tallest bar's number and bars wide
  // enough for five digits (16k-feature SAEs), so no label is cut off at the top or runs into its neighbour
  const ns = "http://www.w3.org/2000/svg", w = 36, gap = 16, height = 160, top = 18, left = 20;
  const max = Math.max(1, ...flow.flatMap(f => [f.births || 0, f.deaths || 0]));
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "births-deaths");
  svg.setAttribute("width", left + flow.length * (2 * w + gap) + 20); svg.setAttribute("height", top + height + 30);
  flow.forEach((f, i) => {
    [["births", "#3b82f6"], ["deaths", "#ef4444"]].forEach(([k, colour], j) => {
      const v = f[k] || 0, bh = (v / max) * height, x = left + i * (2 * w + gap) + j * w;
      const r = document.createElementNS(ns, "rect");
      r.setAttribute("x", x); r.setAttribute("y", top + height - bh);
      r.setAttribute("width", w - 2); r.setAttribute("height", bh); r.setAttribute("fill", colour);
      const t = document.createElementNS(ns, "title"); t.textContent = `layer ${f.layer}: ${k} ${f[k] ?? "n/a"}`; r.append(t);
      const n = document.createElementNS(ns, "text");
      n.setAttribute("x", x + (w - 2) / 2); n.setAttribute("y", top + height - bh - 4);
      n.setAttribute("text-anchor", "middle"); n.setAttribute("font-size", "10"); n.setAttribute("class", "bar-count");
      n.textContent = f[k] ?? "";
      svg.append(r, n);
    });
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", left + i * (2 * w + gap) + w - 1); label.setAttribute("y", top + height + 20);
    label.setAttribute("text-anchor", "middle"); label.textContent = `L${f.layer}`; svg.append(label);
  });
  return h("div", {}, svg, h("p", { class: "muted" }, "blue: born at this layer, red: gone by the next"));
}

// ---- pair: assigned matches of one layer pair -------------------------------------------------------
async function pairPage(a, b, params) {
  const method = params.get("method") || "decoder_cos";
  const rows = await api(`/api/pairs/${enc(a)}/${enc(b)}?method=${method}&limit=200`);
  view.replaceChildren(h("h1", {}, `${a} → ${b}`), h("p", { class: "muted" }, `assigned ${method} matches, best first`),
    sortableTable([
      { key: "feature_a", label: "feature a", render: r => link(featureHref(a, r.feature_a), r.feature_a, { class: "feature-link" }) },
      { key: "feature_b", label: "feature b", render: r => link(featureHref(b, r.feature_b), r.feature_b) },
      { key: "score", label: "score" }, { key: "rank", label: "rank" },
    ], rows));
}

// ---- feature: card + lineage graph ----------------------------------------------------------------
const SITE_COLOURS = { resid: "#2563eb", mlp: "#16a34a", attn: "#d97706" };
const ORIGIN_COLOURS = { "from nowhere": "#9ca3af", RES: "#2563eb", MLP: "#16a34a", ATT: "#d97706" };

// An edge's label: its score (splits, merges), and where `atlas check-edges` ablated its parent, the child's drop
// (✓: beyond its pair's random pairs).
const edgeLabel = (e, st) => [st.label ? e.score.toFixed(2) : "",
  e.causal_drop == null ? "" : `ablated −${Math.round(100 * e.causal_drop)}%${e.causal_holds ? " ✓" : ""}`].filter(Boolean).join(" · ");
const KIND_STYLE = {  // assigned edges bold; splits and merges thinner, with their scores
  carry: { width: 5, colour: "#1e3a8a", line: "solid", label: false },
  gap: { width: 4, colour: "#1e3a8a", line: "dotted", label: true },
  split: { width: 2, colour: "#16a34a", line: "dashed", label: true },
  merge: { width: 2, colour: "#d97706", line: "dashed", label: true },
  candidate: { width: 1, colour: "#cbd5e1", line: "solid", label: false },
};
const MAX_NODES = 40, XSTEP = 200, YSTEP = 48;

const words = n => n.label || (n.top_tokens && n.top_tokens.length ? n.top_tokens.map(t => `“${t}”`).join(" ") : "");
const nodeText = n => (words(n) ? `${n.feature} · ${words(n)}` : `#${n.feature}`);

async function featurePage(sae, i, params) {
  const tau = params.get("tau") || "0.7", edges = params.get("edges") || "default";
  const [card, lin, tree] = await Promise.all([api(`/api/saes/${enc(sae)}/features/${i}`),
    api(`/api/saes/${enc(sae)}/features/${i}/lineage?tau=${tau}&edges=${edges}`),
    api(`/api/saes/${enc(sae)}/features/${i}/width-tree`).catch(() => null)]);
  const matches = Object.entries(card.matches).map(([method, refs]) => h("div", { class: "card" },
    h("h2", {}, method), sortableTable([
      { key: "sae_id", label: "SAE", render: m => link(featureHref(m.sae_id, m.feature), `${m.sae_id}/${m.feature}`) },
      { key: "layer", label: "layer" }, { key: "score", label: "score" }, { key: "direction", label: "dir" },
      { key: "assigned", label: "assigned", render: m => (m.assigned ? "✓" : "") },
      ...(refs.some(m => m.lineage) ? [{ key: "lineage", label: "in the lineage (τ 0.7)?", render: m => m.lineage || "" }] : [])],
      refs)));
  const examples = card.examples.map(e => h("div", { class: "example" },
    h("span", { class: "tag" }, `${e.kind} ${fmt(e.activation, 2)}`),
    ...e.tokens.map((t, k) => (k === e.highlight ? h("b", {}, t) : t)).flatMap(x => [x, " "])));
  const graph = h("div", { id: "lineage" });
  const kinds = {};
  for (const e of lin.edges) kinds[e.kind] = (kinds[e.kind] || 0) + 1;
  const other = edges === "all" ? "default" : "all";
  const widthPart = tree && tree.nodes.length > 1 ? [h("h2", {}, "Across widths"),
    h("p", { id: "width-summary" }, tree.summary, " · ", link(`#/widths/${enc(sae)}/${i}`, "open the width tree"))] : [];
  view.replaceChildren(
    h("h1", {}, `${sae} / ${i}`, card.label ? h("span", { class: "muted" }, ` — ${card.label}`) : ""),
    lin.root.top_tokens && lin.root.top_tokens.length
      ? h("p", { id: "top-tokens", class: "muted" }, "top-activation tokens: ", lin.root.top_tokens.map(t => `“${t}”`).join(" ")) : "",
    h("p", {}, `layer ${card.layer} · decoder norm ${fmt(card.dec_norm)} · threshold ${fmt(card.threshold)} · density ${fmt(card.density, 4)} · `,
      card.neuronpedia_url ? link(card.neuronpedia_url, "Neuronpedia", { target: "_blank", rel: "noopener" }) : "no Neuronpedia id"),
    h("h2", {}, `Lineage (τ = ${tau}${edges === "all" ? ", every candidate" : ""})`),
    h("p", { id: "lineage-summary" }, lin.summary),
    ...(card.lineage_notes || []).map(n => h("p", { class: "lineage-note" }, n)),
    graph,
    h("p", { id: "lineage-count", class: "muted" },
      `${lin.nodes.length} nodes, ${lin.edges.length} edges (${Object.entries(kinds).map(([k, n]) => `${n} ${k}`).join(", ") || "none"}) · `,
      h("span", { class: "legend" }, ...Object.entries(KIND_STYLE).filter(([k]) => kinds[k]).map(([k, st]) =>
        h("span", { style: `border-bottom: ${Math.min(st.width, 4)}px ${st.line} ${st.colour}` }, k))),
      " · ", link(`#/feature/${enc(sae)}/${i}?tau=${tau}&edges=${other}`,
        other === "all" ? "show every candidate" : "show carry / split / merge only", { id: "edges-toggle" }),
      " · click a node to open it, “+N more” to expand its layer"),
    ...widthPart,
    examples.length ? h("div", {}, h("h2", {}, "Examples"), ...examples) : "",
    h("div", { class: "cards" }, matches),
    card.neuronpedia_embed ? h("div", {}, h("h2", {}, "On Neuronpedia"), h("iframe", { src: card.neuronpedia_embed, loading: "lazy" })) : "");
  drawLineage(graph, lin, new Set());
}

function lineageLayout(lin, expanded) {
  // x = layer. Per layer keep the root's line, then the nodes with the strongest edges; with more than
  // MAX_NODES in all, the rest of a layer collapses into one "+N more" node (tap it to expand the layer).
  const key = n => `${n.sae_id}/${n.feature}`;
  const layers = [...new Set(lin.nodes.map(n => n.layer))].sort((a, b) => a - b);
  const cap = lin.nodes.length > MAX_NODES ? Math.max(3, Math.floor(MAX_NODES / layers.length)) : Infinity;
  const weight = {}, line = new Set([key(lin.root)]);
  for (const e of lin.edges) {
    const w = e.score + (e.kind === "carry" || e.kind === "gap" ? 2 : e.kind === "candidate" ? 0 : 1);
    for (const k of [`${e.sae_a}/${e.feature_a}`, `${e.sae_b}/${e.feature_b}`]) weight[k] = Math.max(weight[k] ?? -9, w);
  }
  for (let grew = true; grew;) {  // the root's carry line, both ways
    grew = false;
    for (const e of lin.edges) {
      if (e.kind !== "carry" && e.kind !== "gap") continue;
      const a = `${e.sae_a}/${e.feature_a}`, b = `${e.sae_b}/${e.feature_b}`;
      if (line.has(a) !== line.has(b)) { line.add(a); line.add(b); grew = true; }
    }
  }
  const shown = new Map(), moreOf = new Map(), more = [];
  for (const layer of layers) {
    const nodes = lin.nodes.filter(n => n.layer === layer).sort((a, b) =>
      (line.has(key(b)) - line.has(key(a))) || ((weight[key(b)] ?? -9) - (weight[key(a)] ?? -9)) || a.feature - b.feature);
    const keep = expanded.has(layer) ? nodes : nodes.slice(0, cap);
    keep.forEach(n => shown.set(key(n), n));
    if (keep.length < nodes.length) {
      const id = `more:${layer}`;
      more.push({ id, layer, n: nodes.length - keep.length });
      nodes.slice(keep.length).forEach(n => moreOf.set(key(n), id));
    }
  }
  return { layers, shown, moreOf, more, line };
}

function drawLineage(container, lin, expanded) {
  const { layers, shown, moreOf, more, line } = lineageLayout(lin, expanded);
  const rows = {};
  const elements = layers.map(layer => ({ data: { id: `axis:${layer}`, label: `layer ${layer}`, axis: 1 },
    position: { x: XSTEP * layer, y: -YSTEP }, selectable: false, grabbable: false }));
  const place = (id, layer, data) => {
    const k = (rows[layer] = (rows[layer] ?? -1) + 1);
    elements.push({ data: { id, ...data }, position: { x: XSTEP * layer, y: YSTEP * k } });
  };
  for (const [k, n] of shown) place(k, n.layer, { label: nodeText(n), sae: n.sae_id, feature: n.feature,
    colour: ORIGIN_COLOURS[(n.origin || "").split("&")[0]] || SITE_COLOURS[n.site] || "#2563eb",
    root: n.sae_id === lin.root.sae_id && n.feature === lin.root.feature ? 1 : line.has(k) ? 2 : 0 });
  for (const m of more) place(m.id, m.layer, { label: `+${m.n} more`, more: 1, layer: m.layer, colour: "#e2e8f0" });
  const seen = new Set();
  for (const e of lin.edges) {
    const a = `${e.sae_a}/${e.feature_a}`, b = `${e.sae_b}/${e.feature_b}`;
    const src = shown.has(a) ? a : moreOf.get(a), dst = shown.has(b) ? b : moreOf.get(b);
    const hidden = src !== a || dst !== b, id = `${src}>${dst}`;
    if (seen.has(id)) continue;
    seen.add(id);
    const st = hidden ? KIND_STYLE.candidate : KIND_STYLE[e.kind] || KIND_STYLE.candidate;
    elements.push({ data: { id, source: src, target: dst, kind: hidden ? "hidden" : e.kind, width: st.width,
      colour: st.colour, line: st.line, label: hidden ? "" : edgeLabel(e, st) } });
  }
  const height = 120 + YSTEP * Math.max(...Object.values(rows), 0);
  container.style.height = `${Math.min(760, Math.max(300, height))}px`;
  const cy = cytoscape({ container, elements, layout: { name: "preset", fit: true, padding: 40 },
    style: [
      { selector: "node", style: { "background-color": "data(colour)", label: "data(label)", "font-size": 11, width: 16, height: 16,
        "text-valign": "bottom", "text-margin-y": 3, "text-wrap": "ellipsis", "text-max-width": `${XSTEP - 30}px`,
        "text-background-color": "#fff", "text-background-opacity": 0.85, "text-background-padding": 1 } },
      { selector: "node[root = 1]", style: { "border-width": 3, "border-color": "#111", width: 20, height: 20, "font-weight": "bold" } },
      { selector: "node[root = 2]", style: { "font-weight": "bold" } },
      { selector: "node[more = 1]", style: { shape: "round-rectangle", width: 60, height: 16, "text-valign": "center",
        "text-margin-y": 0, "border-width": 1, "border-color": "#94a3b8", "font-size": 10 } },
      { selector: "node[axis = 1]", style: { "background-opacity": 0, width: 1, height: 1, "font-size": 12, color: "#6b7383",
        "text-valign": "top", "text-background-opacity": 0, events: "no" } },
      { selector: "edge", style: { width: "data(width)", "line-style": "data(line)", "curve-style": "bezier",
        "line-color": "data(colour)", "target-arrow-color": "data(colour)", "target-arrow-shape": "triangle",
        "arrow-scale": 0.8, label: "data(label)", "font-size": 9, color: "#374151", "text-background-color": "#fff",
        "text-background-opacity": 1, "text-background-padding": 1 } }] });
  cy.on("tap", "node[sae]", ev => { location.hash = featureHref(ev.target.data("sae"), ev.target.data("feature")); });
  cy.on("tap", "node[more = 1]", ev => { cy.destroy(); drawLineage(container, lin, new Set([...expanded, ev.target.data("layer")])); });
  window.atlasGraph = cy;  // for browser tests and the console
}

// ---- width tree: a feature across dictionary sizes ----------------------------------------------
const CLASS_COLOURS = { kept: "#2563eb", split: "#16a34a", duplicate: "#d97706", absent: "#9ca3af" };

async function widthPage(sae, i) {
  const tree = await api(`/api/saes/${enc(sae)}/features/${i}/width-tree`);
  const graph = h("div", { id: "width-tree" });
  view.replaceChildren(h("h1", {}, `${sae} / ${i} across widths`),
    h("p", { id: "width-summary" }, tree.summary),
    graph,
    h("p", { class: "muted" }, "x = dictionary size; edges: decoder cosine of a wide feature with its parent (its best narrow feature). ",
      "Colours: ", ...Object.entries(CLASS_COLOURS).map(([c, col]) => h("span", { style: `color: ${col}` }, `${c} `)),
      "(the feature's class in the next wider SAE). Click a node to open it."),
    sortableTable([
      { key: "d_sae", label: "width" }, { key: "feature", label: "feature", render: n => link(featureHref(n.sae_id, n.feature), `${n.sae_id}/${n.feature}`) },
      { key: "score", label: "cosine to parent" }, { key: "class", label: "class" }, { key: "n_children", label: "children" },
      { key: "combo_cos", label: "combination cosine" }, { key: "min_child_cos", label: "children's least cosine" },
      { key: "label", label: "label", render: n => words(n) }], tree.nodes));
  drawWidthTree(graph, tree);
}

function drawWidthTree(container, tree) {
  const key = (s, f) => `${s}/${f}`;
  const kids = {};
  for (const n of tree.nodes) if (n.parent_sae) (kids[key(n.parent_sae, n.parent_feature)] ||= []).push(n);
  const depths = [...new Set(tree.nodes.map(n => n.depth))].sort((a, b) => a - b);
  const top = tree.nodes.filter(n => n.depth === depths[0]);
  const y = {};
  let next = 0;
  const walk = n => {  // leaves take consecutive rows; a parent sits at the middle of its children
    const ch = (kids[key(n.sae_id, n.feature)] || []).sort((a, b) => (b.score ?? 0) - (a.score ?? 0));
    if (!ch.length) { y[key(n.sae_id, n.feature)] = next++; return; }
    ch.forEach(walk);
    y[key(n.sae_id, n.feature)] = (y[key(ch[0].sae_id, ch[0].feature)] + y[key(ch.at(-1).sae_id, ch.at(-1).feature)]) / 2;
  };
  top.forEach(walk);
  const widths = [...new Set(tree.nodes.map(n => n.d_sae))].sort((a, b) => a - b);
  const elements = widths.map((w, k) => ({ data: { id: `axis:${w}`, label: `width ${w}`, axis: 1 },
    position: { x: 240 * k, y: -YSTEP }, selectable: false, grabbable: false }));
  for (const n of tree.nodes) {
    const id = key(n.sae_id, n.feature);
    elements.push({ data: { id, label: nodeText(n), sae: n.sae_id, feature: n.feature,
      colour: CLASS_COLOURS[n.class] || "#93c5fd", root: n.depth === 0 ? 1 : 0 },
      position: { x: 240 * widths.indexOf(n.d_sae), y: YSTEP * (y[id] ?? 0) } });
    if (n.parent_sae && tree.nodes.some(p => p.sae_id === n.parent_sae && p.feature === n.parent_feature))
      elements.push({ data: { id: `${n.parent_sae}/${n.parent_feature}>${id}`, source: key(n.parent_sae, n.parent_feature),
        target: id, label: fmt(n.score, 2) } });
  }
  container.style.height = `${Math.min(760, Math.max(260, 140 + YSTEP * next))}px`;
  const cy = cytoscape({ container, elements, layout: { name: "preset", fit: true, padding: 40 },
    style: [
      { selector: "node", style: { "background-color": "data(colour)", label: "data(label)", "font-size": 11, width: 16, height: 16,
        "text-valign": "bottom", "text-margin-y": 3, "text-wrap": "ellipsis", "text-max-width": "210px",
        "text-background-color": "#fff", "text-background-opacity": 0.85 } },
      { selector: "node[root = 1]", style: { "border-width": 3, "border-color": "#111", width: 20, height: 20, "font-weight": "bold" } },
      { selector: "node[axis = 1]", style: { "background-opacity": 0, width: 1, height: 1, "font-size": 12, color: "#6b7383",
        "text-valign": "top", "text-background-opacity": 0, events: "no" } },
      { selector: "edge", style: { width: 2, "curve-style": "bezier", "line-color": "#64748b", "target-arrow-color": "#64748b",
        "target-arrow-shape": "triangle", label: "data(label)", "font-size": 9, "text-background-color": "#fff",
        "text-background-opacity": 1 } }] });
  cy.on("tap", "node[sae]", ev => { location.hash = featureHref(ev.target.data("sae"), ev.target.data("feature")); });
  window.atlasGraph = cy;
}

// ---- orphans ---------------------------------------------------------------------------------------
async function orphansPage(sae) {
  const [groups, consistency] = await Promise.all([api("/api/sibling-groups"), api("/api/consistency").catch(() => [])]);
  const parts = [h("h1", {}, "Orphan features across seeds and datasets")];
  if (!sae) {
    for (const g of groups) {
      const stats = await Promise.all(g.saes.map(s => api(`/api/orphans?sae=${enc(s)}`)));
      const mine = consistency.filter(c => g.saes.includes(c.sae_a) && g.saes.includes(c.sae_b));
      parts.push(h("h2", {}, `${g.model} · ${g.hook} · width ${g.d_sae}`));
      if (mine.length) parts.push(h("p", { class: "muted" }, "Consistency, each beside random decoders of the same shape: ",
          "PW-MCC (Song et al. 2025) = mean decoder cosine of one one-to-one assignment of all features; ",
          "MMCS (Sharkey et al. 2022) = mean best |decoder cosine| in the other SAE, both ways (at least PW-MCC)."),
        sortableTable([{ key: "sae_a", label: "SAE a" }, { key: "sae_b", label: "SAE b" }, { key: "relation", label: "sibling by" },
          { key: "pw_mcc", label: "PW-MCC" }, { key: "pw_mcc_random", label: "random" },
          { key: "mmcs", label: "MMCS" }, { key: "mmcs_random", label: "random" }], mine));
      parts.push(sortableTable([
        { key: "sae_id", label: "SAE", render: o => link(`#/orphans/${enc(o.sae_id)}`, o.sae_id, { class: "orphan-link" }) },
        { key: "n_orphans", label: "orphans" }, { key: "orphan_frac", label: "fraction" },
        { key: "n_sib", label: "siblings matched" }], stats.map(o => ({ ...o, n_sib: o.orphans[0]?.n_siblings ?? 0 }))));
    }
    view.replaceChildren(...parts);
    return;
  }
  let page = await api(`/api/orphans?sae=${enc(sae)}`);
  const orphans = [...page.orphans];
  while (page.next) { page = await api(`/api/orphans?sae=${enc(sae)}&cursor=${page.next}`); orphans.push(...page.orphans); }
  view.replaceChildren(h("h1", {}, `Orphans of ${sae}`),
    h("p", { id: "orphan-count" }, `${page.n_orphans} of ${page.n_features} features (${(100 * page.orphan_frac).toFixed(1)}%) are shared with none of: ${page.siblings.join(", ")}`),
    sortableTable([{ key: "feature", label: "feature", render: o => link(featureHref(sae, o.feature), o.feature) },
      { key: "label", label: "label", render: o => words(o) }, { key: "n_siblings", label: "siblings" }], orphans));
}

// ---- search and routing ----------------------------------------------------------------------------
document.getElementById("search").addEventListener("submit", async ev => {
  ev.preventDefault();
  const q = ev.target.q.value.trim();
  const np = q.match(/neuronpedia\.org\/([^/]+)\/([^/]+)\/(\d+)/);
  const direct = q.match(/^([\w.-]+)\/(\d+)$/);
  if (direct) { location.hash = featureHref(direct[1], direct[2]); return; }
  if (np) {
    const saes = (await api(`/api/saes`)).items.filter(s => s.neuronpedia_id === `${np[1]}/${np[2]}`);
    if (saes.length) { location.hash = featureHref(saes[0].sae_id, np[3]); return; }
  }
  const found = await api(`/api/features?label=${enc(q)}`);
  view.replaceChildren(h("h1", {}, `Features labelled “${q}”`), sortableTable([
    { key: "sae_id", label: "feature", render: f => link(featureHref(f.sae_id, f.feature), `${f.sae_id}/${f.feature}`) },
    { key: "layer", label: "layer" }, { key: "label", label: "label" }], found));
});

async function route() {
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query || "");
  try {
    if (parts[0] === "stack") await stackPage(parts[1], params);
    else if (parts[0] === "pair") await pairPage(parts[1], parts[2], params);
    else if (parts[0] === "feature") await featurePage(parts[1], Number(parts[2]), params);
    else if (parts[0] === "orphans") await orphansPage(parts[1]);
    else if (parts[0] === "widths") await widthPage(parts[1], Number(parts[2]));
    else await home();
    document.body.dataset.ready = location.hash;  // tests wait for this
  } catch (err) {
    view.replaceChildren(h("p", { class: "error" }, err.message));
    document.body.dataset.ready = location.hash;
  }
}

window.addEventListener("hashchange", route);
route();
