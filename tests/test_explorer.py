"""The web explorer in a real headless Chromium against `atlas serve` on a loopback port.

Home → stack → heatmap cell → pair → feature page → lineage node → next feature page, and the orphans
page, each checked against the JSON API; no console errors; the API docs render with no network.
Skips with the reason when Chromium or Playwright is missing (`make test` installs both: `make browser`, .venv).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from bench.server import serving

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (apt-get install chromium)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Screenshots for the README come from this same walk over the real MiniLM family:
#   ATLAS_EXPLORER_ATLAS=atlas.duckdb ATLAS_EXPLORER_STACK=<stack> ATLAS_SCREENSHOTS=docs pytest tests/test_explorer.py -k walk
STACK = os.environ.get("ATLAS_EXPLORER_STACK", "synth-resid-w256-jumprelu-s0-A")


@pytest.fixture(scope="module")
def server(synth_atlas):
    with serving(os.environ.get("ATLAS_EXPLORER_ATLAS", synth_atlas.path)) as s:
        yield s.base


HAIRBALL = "synth-resid0-w64-s0-H"


@pytest.fixture(scope="module")
def split_server(tmp_path_factory):
    """A width family (128 -> 256 -> 512 at layer 1) and a 'hairball' stack whose feature 0 has 13
    near-parallel copies at each of 4 later layers (a 53-node lineage with every candidate followed)."""
    import numpy as np

    from atlas.synth import SynthConfig, generate, noisy, unit, write_sae
    from atlas_ingest.jobs.widths import run_widths

    from .conftest import build_atlas

    root = tmp_path_factory.mktemp("explorer")
    folders = generate(SynthConfig(d_in=256, d_sae=128, n_layers=3, n_seeds=1, second_dataset=False,
                                   widths=(256, 512), seed=5), root / "synth")
    rng = np.random.default_rng(0)
    d = 256
    r = unit(rng.standard_normal(d, dtype=np.float32))
    for layer in range(5):
        dec = unit(rng.standard_normal((64, d), dtype=np.float32))
        dec[0] = r
        if layer:
            dec[:13] = noisy(rng, np.repeat(r[None], 13, 0), 0.5)
        folders.append(root / f"hairball/layer_{layer}")
        write_sae(folders[-1], dec, dec, np.ones(64, np.float32), layer, 0, "H")
    atlas = build_atlas(root / "split.duckdb", folders)
    from atlas.queries.selection import select_pairs

    with atlas.read() as con:
        run_widths(atlas, select_pairs(con, "widths"))
    with serving(os.environ.get("ATLAS_EXPLORER_ATLAS", atlas.path)) as s:
        yield s.base


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A page that records console errors and refuses (and records) any request off this machine."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.errors, pg.offsite = [], []
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))

    def guard(route):
        if route.request.url.startswith("http://127.0.0.1:") or route.request.url.startswith("data:"):
            route.continue_()
        else:
            pg.offsite.append(route.request.url)
            route.abort()

    pg.route("**/*", guard)
    yield pg
    context.close()


def _ready(pg, hash_prefix: str = ""):
    pg.wait_for_function(f"document.body.dataset.ready !== undefined && location.hash.startsWith({hash_prefix!r}) "
                         f"&& document.body.dataset.ready === location.hash", timeout=15000)


def _shot(pg, name: str):
    folder = os.environ.get("ATLAS_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def test_walk_from_home_to_a_lineage_neighbour(page, server):
    api = httpx.Client(base_url=server)
    page.goto(server + "/")
    _ready(page)
    page.click(f"a.stack-link[href='#/stack/{STACK}']")
    _ready(page, "#/stack/")
    perm = api.get("/api/layer-pairs", params={"stack": STACK, "permutation_only": "true"}).json()["items"]
    outlined = page.eval_on_selector_all("svg.heatmap rect.perm", "els => [...new Set(els.map(e => e.dataset.pair))]")
    assert sorted(outlined) == sorted(f"{p['layer_a']}-{p['layer_b']}" for p in perm)
    assert perm or "ATLAS_EXPLORER_STACK" in os.environ  # the planted family has permutation-only pairs
    outlined = outlined or page.eval_on_selector_all("svg.heatmap rect", "els => els.map(e => e.dataset.pair)")
    assert page.inner_text("#perm-count") == f"{len(perm)} permutation-only pairs"
    _shot(page, "stack")
    # every bar's count is drawn whole inside the chart and clear of its neighbours' counts
    boxes = page.eval_on_selector_all("svg.births-deaths text.bar-count", """ts => ts.filter(t => t.textContent).map(t => {
        const b = t.getBBox(), s = t.ownerSVGElement; return [b.x, b.y, b.x + b.width, b.y + b.height,
        +s.getAttribute('width'), +s.getAttribute('height')]; })""")
    assert boxes and all(x1 >= 0 and y1 >= 0 and x2 <= w and y2 <= h for x1, y1, x2, y2, w, h in boxes)
    assert all(a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1] for i, a in enumerate(boxes) for b in boxes[i + 1:])
    page.click(f"svg.heatmap rect[data-pair='{outlined[0]}']")
    _ready(page, "#/pair/")
    first = page.get_attribute("a.feature-link", "href")
    page.click("a.feature-link")
    _ready(page, "#/feature/")
    sae, feature = first.split("/")[2], int(first.split("/")[3])
    lineage = api.get(f"/api/saes/{sae}/features/{feature}/lineage").json()
    assert page.evaluate("window.atlasGraph.nodes('[sae]').length") == len(lineage["nodes"]) > 1  # <= 40: all drawn
    assert page.evaluate("window.atlasGraph.edges().length") == len(lineage["edges"])
    _shot(page, "feature")
    target = next(n for n in lineage["nodes"] if n["layer"] != lineage["root"]["layer"])
    page.evaluate(f"window.atlasGraph.$id({target['sae_id'] + '/' + str(target['feature'])!r}).emit('tap')")
    _ready(page, f"#/feature/{target['sae_id']}/{target['feature']}")
    assert page.inner_text("h1").startswith(f"{target['sae_id']} / {target['feature']}")
    assert page.errors == [] and page.offsite == []


def test_orphans_page_matches_the_api(page, server):
    sae = "synth-resid1-w256-s0-A"
    page.goto(server + "/#/orphans")
    _ready(page, "#/orphans")
    page.click(f"a.orphan-link[href='#/orphans/{sae}']")
    _ready(page, f"#/orphans/{sae}")
    expected = httpx.get(f"{server}/api/orphans", params={"sae": sae}).json()
    assert page.inner_text("#orphan-count").startswith(f"{expected['n_orphans']} of {expected['n_features']} features")
    assert page.eval_on_selector_all("table tr", "rows => rows.length") == expected["n_orphans"] + 1
    assert page.errors == [] and page.offsite == []


def test_api_docs_render_offline(page, server):
    page.goto(server + "/schema/swagger")
    page.wait_for_selector(".swagger-ui .opblock", timeout=15000)
    assert page.locator(".opblock").count() >= 15
    assert page.offsite == [] and page.errors == []


# A feature to draw: "sae/feature" in the served atlas (defaults: the fixtures' planted ones).
SPLIT_FEATURE = os.environ.get("ATLAS_EXPLORER_SPLIT", f"{HAIRBALL}/0")
WIDTH_FEATURE = os.environ.get("ATLAS_EXPLORER_WIDTH")

_GEOMETRY = """() => window.atlasGraph.nodes().map(n => ({
    id: n.id(), x: n.position('x'), more: !!n.data('more'),
    axis: !!n.data('axis'), label: n.data('label'),
    box: n.boundingBox({includeNodes: false, includeEdges: false, includeLabels: true})}))"""


def _overlaps(nodes) -> list[tuple[str, str]]:
    out = []
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            p, q = a["box"], b["box"]
            if a["label"] and b["label"] and min(p["x2"], q["x2"]) - max(p["x1"], q["x1"]) > 0.5 and \
                    min(p["y2"], q["y2"]) - max(p["y1"], q["y1"]) > 0.5:
                out.append((a["label"], b["label"]))
    return out


def _layers_by_x(page, api, lin):
    layer_of = {f"{n['sae_id']}/{n['feature']}": n["layer"] for n in lin["nodes"]}
    geo = page.evaluate(_GEOMETRY)
    xs = {}
    for n in geo:
        if n["id"] in layer_of:
            xs.setdefault(layer_of[n["id"]], set()).add(round(n["x"], 3))
    return geo, xs


def test_lineage_is_readable_x_is_layer_and_labels_do_not_overlap(page, split_server):
    api = httpx.Client(base_url=split_server)
    sae, feature = SPLIT_FEATURE.rsplit("/", 1)
    every = api.get(f"/api/saes/{sae}/features/{feature}/lineage", params={"edges": "all"}).json()
    page.goto(f"{split_server}/#/feature/{sae}/{feature}?edges=all")
    _ready(page, "#/feature/")
    geo, xs = _layers_by_x(page, api, every)
    if "ATLAS_EXPLORER_SPLIT" not in os.environ:
        assert len(every["nodes"]) >= 50
    assert all(len(v) == 1 for v in xs.values())  # one x per layer, growing with the layer
    assert [min(xs[k]) for k in sorted(xs)] == sorted(min(v) for v in xs.values()) and len(xs) >= 3
    assert _overlaps(geo) == []
    shown = [n for n in geo if not n["axis"] and not n["more"]]
    more = [n for n in geo if n["more"]]
    if len(every["nodes"]) > 40:
        assert more and len(shown) <= 45
        assert sum(int(n["label"].split()[0][1:]) for n in more) + len(shown) == len(every["nodes"])
        before = page.evaluate("window.atlasGraph.nodes('[sae]').length")
        page.evaluate(f"window.atlasGraph.$id({more[0]['id']!r}).emit('tap')")
        assert page.evaluate("window.atlasGraph.nodes('[sae]').length") > before
        assert _overlaps(page.evaluate(_GEOMETRY)) == []
    assert page.inner_text("#lineage-summary") == every["summary"]

    lin = api.get(f"/api/saes/{sae}/features/{feature}/lineage").json()
    page.click("#edges-toggle")  # back to the default: carry / split / merge
    _ready(page, f"#/feature/{sae}/{feature}?tau=0.7&edges=default")
    geo, xs = _layers_by_x(page, api, lin)
    assert all(len(v) == 1 for v in xs.values())
    assert [min(xs[k]) for k in sorted(xs)] == sorted(min(v) for v in xs.values())
    assert _overlaps(geo) == []
    kinds = page.evaluate("window.atlasGraph.edges().map(e => [e.data('kind'), e.data('width'), e.data('label')])")
    drawn = {k for k, *_ in kinds} - {"hidden"}  # 'hidden': an edge into a "+N more" node
    assert drawn <= {e["kind"] for e in lin["edges"]} and {"carry", "split"} <= drawn
    widths = {k: w for k, w, _ in kinds}
    assert widths["carry"] > widths["split"]
    assert all(label for k, _, label in kinds if k == "split")  # splits carry their scores
    assert page.inner_text("#lineage-summary") == lin["summary"] and " split)" in lin["summary"]
    card = api.get(f"/api/saes/{sae}/features/{feature}").json()  # why the carry may go to a weaker child
    assert page.eval_on_selector_all(".lineage-note", "ps => ps.map(p => p.innerText)") == card["lineage_notes"]
    reasons = page.eval_on_selector_all(".card table tr td:last-child", "tds => tds.map(t => t.innerText)")
    assert {m["lineage"] or "" for m in card["matches"]["decoder_cos"]} <= set(reasons)
    _shot(page, "lineage-hairball")
    assert page.errors == [] and page.offsite == []


def test_planted_split_reads_as_one_line_with_a_branch(page, split_server):
    api = httpx.Client(base_url=split_server)
    sae = "synth-resid0-w128-s0-A"
    rows = api.get("/api/sql", params={"sql": f"SELECT feature_a FROM matches WHERE sae_a = '{sae}' AND sae_b = 'synth-resid1-w128-s0-A' AND method = "
                                              "'decoder_cos' AND score >= 0.7 AND edge_kind(assigned, rank, rank_b) = "
                                              "'split' ORDER BY feature_a LIMIT 1", "_format": "json"}).json()
    feature = rows["rows"][0][0]
    lin = api.get(f"/api/saes/{sae}/features/{feature}/lineage").json()
    page.goto(f"{split_server}/#/feature/{sae}/{feature}")
    _ready(page, "#/feature/")
    kinds = page.evaluate("window.atlasGraph.edges().map(e => e.data('kind'))")
    assert sorted(kinds) == sorted(e["kind"] for e in lin["edges"]) and "split" in kinds
    assert "layer 1: 2 features (1 carry, 1 split)" in page.inner_text("#lineage-summary")
    assert _overlaps(page.evaluate(_GEOMETRY)) == []
    _shot(page, "lineage-split")
    assert page.errors == [] and page.offsite == []


def test_width_tree_page(page, split_server):
    api = httpx.Client(base_url=split_server)
    if WIDTH_FEATURE:
        sae, feature = WIDTH_FEATURE.rsplit("/", 1)
    else:  # a planted split whose children split again
        sae = "synth-resid1-w128-s0-A"
        feature = next(f for f in range(128) if api.get(f"/api/saes/{sae}/features/{f}/width-tree").json()["root"]
                       ["class"] == "split" and len({n["d_sae"] for n in api.get(
                           f"/api/saes/{sae}/features/{f}/width-tree").json()["nodes"]}) == 3)
    tree = api.get(f"/api/saes/{sae}/features/{feature}/width-tree").json()
    page.goto(f"{split_server}/#/feature/{sae}/{feature}")
    _ready(page, "#/feature/")
    assert page.inner_text("#width-summary").startswith(tree["summary"])
    page.click("#width-summary a")
    _ready(page, "#/widths/")
    geo = page.evaluate(_GEOMETRY)
    width_of = {f"{n['sae_id']}/{n['feature']}": n["d_sae"] for n in tree["nodes"]}
    placed = sorted((width_of[n["id"]], n["x"]) for n in geo if n["id"] in width_of)
    assert len(placed) == len(tree["nodes"]) and [x for _, x in placed] == sorted(x for _, x in placed)
    assert page.evaluate("window.atlasGraph.edges().length") == sum(1 for n in tree["nodes"] if n["depth"] > 0)
    assert _overlaps(geo) == []
    assert page.inner_text("#width-summary") == tree["summary"] and "splits into" in tree["summary"]
    _shot(page, "width-tree")
    assert page.errors == [] and page.offsite == []


def test_orphans_page_shows_pw_mcc_and_mmcs_per_sibling_pair(page, server):
    rows = httpx.get(f"{server}/api/consistency").json()
    assert rows and all(r["pw_mcc"] > r["pw_mcc_random"] and r["mmcs"] > r["mmcs_random"] for r in rows)
    page.goto(server + "/#/orphans")
    _ready(page, "#/orphans")
    text = page.inner_text("main")
    assert "PW-MCC" in text and f"{rows[0]['pw_mcc']:.3f}" in text
    assert "MMCS" in text and f"{rows[0]['mmcs']:.3f}" in text
    assert page.errors == [] and page.offsite == []


def test_home_page_shows_what_the_build_has_done_and_what_is_coming(page, synth_atlas, tmp_path):
    """The panel `atlas demo` feeds (atlas.files/build.json via /api/build): steps with done / total and the
    last item, redrawn while the build runs, and the finished state."""
    from atlas.status import StatusWriter

    atlas = synth_atlas.copy_to(tmp_path / "building.duckdb")
    status = StatusWriter(atlas.path, ["MiniLM activations", "MiniLM SAEs", "MiniLM matches"], every=0)
    status.update("MiniLM activations", 4000, 4000, "prose", "tokens")
    status.update("MiniLM SAEs", 1, 7, "prose-s0-L2")
    with serving(atlas.path) as s:
        base = s.base
        page.goto(base + "/")
        _ready(page)
        assert page.get_attribute("#build", "data-state") == "running"
        rows = page.eval_on_selector_all("#build tr", "rs => rs.map(r => [r.dataset.step, r.innerText])")
        assert [step for step, _ in rows] == ["MiniLM activations", "MiniLM SAEs", "MiniLM matches"]
        assert "4,000 / 4,000 tokens" in rows[0][1] and "1 / 7" in rows[1][1] and "prose-s0-L2" in rows[1][1]
        assert "coming" in rows[2][1]
        assert page.locator("a.stack-link").count() > 0  # what is built is listed below it
        _shot(page, "home-building")
        status.update("MiniLM SAEs", 2, 7, "prose-s0-L3")
        page.wait_for_function("() => [...document.querySelectorAll('#build tr')].some(r => r.innerText.includes('2 / 7'))",
                               timeout=10000)
        status.finish("done", "every step is built and served")
        page.wait_for_selector("#build[data-state=done]", timeout=10000)
        assert page.inner_text("#build h2") == "Build finished"
        assert page.errors == [] and page.offsite == []
