// Feature Atlas explorer: a small static app over the JSON API. State lives in the URL hash, so every
// view is a shareable link: #/stack/<stack>?stat=..., #/pair/<a>/<b>, #/feature/<sae>/<i>, #/orphans/<sae>.
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

// ---- home: stacks grouped by model ---------------------------------------------------------------
async function home() {
  const stacks = await api("/api/stacks");
  const byModel = {};
  for (const s of stacks) (byModel[s.model] ||= []).push(s);
  view.replaceChildren(h("h1", {}, "SAE stacks"),
    ...Object.entries(byModel).map(([model, list]) => h("section", {},
      h("h2", {}, model),
      sortableTable([
        { key: "stack", label: "stack", render: s => link(`#/stack/${enc(s.stack)}`, s.stack, { class: "stack-link" }) },
        { key: "site", label: "site" }, { key: "d_sae", label: "width" }, { key: "arch", label: "arch" },
        { key: "seed", label: "seed" }, { key: "dataset", label: "dataset" }, { key: "n_saes", label: "SAEs" },
        { key: "first_layer", label: "layers", render: s => `${s.first_layer}–${s.last_layer}` },
      ], list))));
}

// ---- stack: heatmap of layer pairs + births/deaths chart ------------------------------------------
async function stackPage(stack, params) {
  const method = params.get("method") || "decoder_cos", stat = params.get("stat") || "matched_frac";
  const [matrix, pairs, flow] = await Promise.all([
    api(`/api/stacks/${enc(stack)}/matrix?method=${method}&stat=${stat}`),
    api(`/api/layer-pairs?stack=${enc(stack)}&method=${method}&permutation_only=true`),
    api(`/api/stacks/${enc(stack)}/flow?method=${method}`),
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
  const ns = "http://www.w3.org/2000/svg", w = 24, gap = 14, height = 160;
  const max = Math.max(1, ...flow.flatMap(f => [f.births || 0, f.deaths || 0]));
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", flow.length * (2 * w + gap) + 40); svg.setAttribute("height", height + 40);
  flow.forEach((f, i) => {
    [["births", "#3b82f6"], ["deaths", "#ef4444"]].forEach(([k, colour], j) => {
      const v = f[k] || 0, bh = (v / max) * height;
      const r = document.createElementNS(ns, "rect");
      r.setAttribute("x", 20 + i * (2 * w + gap) + j * w); r.setAttribute("y", height - bh + 10);
      r.setAttribute("width", w - 2); r.setAttribute("height", bh); r.setAttribute("fill", colour);
      const t = document.createElementNS(ns, "title"); t.textContent = `layer ${f.layer}: ${k} ${f[k] ?? "n/a"}`; r.append(t);
      const n = document.createElementNS(ns, "text");
      n.setAttribute("x", 20 + i * (2 * w + gap) + j * w + w / 2 - 1); n.setAttribute("y", height - bh + 6);
      n.setAttribute("text-anchor", "middle"); n.setAttribute("font-size", "10"); n.textContent = f[k] ?? "";
      svg.append(r, n);
    });
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", 20 + i * (2 * w + gap) + w); label.setAttribute("y", height + 28);
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

async function featurePage(sae, i, params) {
  const tau = params.get("tau") || "0.7";
  const [card, lin] = await Promise.all([api(`/api/saes/${enc(sae)}/features/${i}`),
    api(`/api/saes/${enc(sae)}/features/${i}/lineage?tau=${tau}`)]);
  const matches = Object.entries(card.matches).map(([method, refs]) => h("div", { class: "card" },
    h("h2", {}, method), sortableTable([
      { key: "sae_id", label: "SAE", render: m => link(featureHref(m.sae_id, m.feature), `${m.sae_id}/${m.feature}`) },
      { key: "layer", label: "layer" }, { key: "score", label: "score" }, { key: "direction", label: "dir" },
      { key: "assigned", label: "assigned", render: m => (m.assigned ? "✓" : "") }], refs)));
  const examples = card.examples.map(e => h("div", { class: "example" },
    h("span", { class: "tag" }, `${e.kind} ${fmt(e.activation, 2)}`),
    ...e.tokens.map((t, k) => (k === e.highlight ? h("b", {}, t) : t)).flatMap(x => [x, " "])));
  const graph = h("div", { id: "lineage" });
  view.replaceChildren(
    h("h1", {}, `${sae} / ${i}`, card.label ? h("span", { class: "muted" }, ` — ${card.label}`) : ""),
    h("p", {}, `layer ${card.layer} · decoder norm ${fmt(card.dec_norm)} · threshold ${fmt(card.threshold)} · density ${fmt(card.density, 4)} · `,
      card.neuronpedia_url ? link(card.neuronpedia_url, "Neuronpedia", { target: "_blank", rel: "noopener" }) : "no Neuronpedia id"),
    h("h2", {}, `Lineage (τ = ${tau}): born at layer ${lin.birth_layer}, last seen at ${lin.death_layer}, lifespan ${lin.lifespan}`),
    graph, h("p", { id: "lineage-count", class: "muted" }, `${lin.nodes.length} nodes, ${lin.edges.length} edges; click a node to open it`),
    examples.length ? h("div", {}, h("h2", {}, "Examples"), ...examples) : "",
    h("div", { class: "cards" }, matches),
    card.neuronpedia_embed ? h("div", {}, h("h2", {}, "On Neuronpedia"), h("iframe", { src: card.neuronpedia_embed, loading: "lazy" })) : "");
  drawLineage(graph, lin);
}

function drawLineage(container, lin) {
  const id = n => `${n.sae_id}/${n.feature}`;
  const byLayer = {};
  for (const n of lin.nodes) (byLayer[n.layer] ||= []).push(n);
  const elements = [];
  for (const [layer, nodes] of Object.entries(byLayer)) nodes.forEach((n, k) => elements.push({
    data: { id: id(n), label: `L${n.layer}:${n.feature}`, sae: n.sae_id, feature: n.feature,
            colour: ORIGIN_COLOURS[(n.origin || "").split("&")[0]] || SITE_COLOURS[n.site] || "#2563eb",
            root: n.sae_id === lin.root.sae_id && n.feature === lin.root.feature ? 1 : 0 },
    position: { x: 110 * Number(layer), y: 70 * (k - (nodes.length - 1) / 2) } }));
  for (const e of lin.edges) elements.push({ data: { id: `${e.sae_a}/${e.feature_a}>${e.sae_b}/${e.feature_b}`,
    source: `${e.sae_a}/${e.feature_a}`, target: `${e.sae_b}/${e.feature_b}`, width: 1 + 6 * Math.max(0, e.score),
    style: e.assigned ? "solid" : "dashed" } });
  const cy = cytoscape({ container, elements, layout: { name: "preset", fit: true, padding: 30 },
    style: [
      { selector: "node", style: { "background-color": "data(colour)", label: "data(label)", "font-size": 10, width: 18, height: 18 } },
      { selector: "node[root = 1]", style: { "border-width": 3, "border-color": "#111" } },
      { selector: "edge", style: { width: "data(width)", "line-style": "data(style)", "curve-style": "bezier",
        "target-arrow-shape": "triangle", "line-color": "#94a3b8", "target-arrow-color": "#94a3b8" } }] });
  cy.on("tap", "node", ev => { location.hash = featureHref(ev.target.data("sae"), ev.target.data("feature")); });
  window.atlasGraph = cy;  // for browser tests and the console
}

// ---- orphans ---------------------------------------------------------------------------------------
async function orphansPage(sae) {
  const groups = await api("/api/sibling-groups");
  const parts = [h("h1", {}, "Orphan features across seeds and datasets")];
  if (!sae) {
    for (const g of groups) {
      const stats = await Promise.all(g.saes.map(s => api(`/api/orphans?sae=${enc(s)}`)));
      parts.push(h("h2", {}, `${g.model} · ${g.hook} · width ${g.d_sae}`), sortableTable([
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
      { key: "label", label: "label" }, { key: "n_siblings", label: "siblings" }], orphans));
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
    else await home();
    document.body.dataset.ready = location.hash;  // tests wait for this
  } catch (err) {
    view.replaceChildren(h("p", { class: "error" }, err.message));
    document.body.dataset.ready = location.hash;
  }
}

window.addEventListener("hashchange", route);
route();
