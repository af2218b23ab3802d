"""The web explorer in a real headless Chromium against `atlas serve` on a loopback port.

Home → stack → heatmap cell → pair → feature page → lineage node → next feature page, and the orphans
page, each checked against the JSON API; no console errors; the API docs render with no network.
Skips with the reason when Chromium or Playwright is missing (.ci/run installs both).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (apt-get install chromium)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Screenshots for the README come from this same walk over the real MiniLM family:
#   ATLAS_EXPLORER_ATLAS=atlas.duckdb ATLAS_EXPLORER_STACK=<stack> ATLAS_SCREENSHOTS=docs pytest tests/test_explorer.py -k walk
STACK = os.environ.get("ATLAS_EXPLORER_STACK", "synth-resid-w256-jumprelu-s0-A")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(synth_atlas):
    port = _free_port()
    path = os.environ.get("ATLAS_EXPLORER_ATLAS", str(synth_atlas.path))
    proc = subprocess.Popen([sys.executable, "-m", "atlas.cli", "--atlas", path, "serve",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"atlas serve did not start: {proc.stderr.read().decode()[-2000:]}")
    yield base
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    """A page that records console errors and refuses (and records) any request off this machine."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.errors, pg.offsite = [], []
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))

    def guard(route):
        if route.request.url.startswith(server) or route.request.url.startswith("data:"):
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
    page.click(f"svg.heatmap rect[data-pair='{outlined[0]}']")
    _ready(page, "#/pair/")
    first = page.get_attribute("a.feature-link", "href")
    page.click("a.feature-link")
    _ready(page, "#/feature/")
    sae, feature = first.split("/")[2], int(first.split("/")[3])
    lineage = api.get(f"/api/saes/{sae}/features/{feature}/lineage").json()
    assert page.evaluate("window.atlasGraph.nodes().length") == len(lineage["nodes"]) > 1
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
