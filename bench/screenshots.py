"""`python -m bench.screenshots ATLAS [--out docs]`: the README's explorer screenshots (stack.png, feature.png,
lineage-split.png, width-tree.png) taken in headless Chromium from `atlas serve` on a MiniLM-family atlas
(`atlas minilm`, as `make demo` builds it), on the family's own stack, a feature whose default lineage
(carry / split / merge) has a split, and a layer-3 feature that splits across widths."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import httpx

from bench.server import serving

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
STACK = "all-MiniLM-L6-v2-resid-w768-standard-s0-prose"
BASE = "all-MiniLM-L6-v2-resid{layer}-w768-s0-prose"


def _sql(api: httpx.Client, sql: str) -> list:
    r = api.get("/api/sql", params={"sql": sql, "_format": "json"})
    r.raise_for_status()
    return r.json()["rows"]


def _ready(pg, prefix: str):
    pg.wait_for_function(f"document.body.dataset.ready !== undefined && location.hash.startsWith({prefix!r}) "
                         "&& document.body.dataset.ready === location.hash", timeout=30000)


def pick(api: httpx.Client) -> dict[str, str]:
    """The views to shoot: a layer-2 feature with a carry chain and a split (most lineage nodes first, at most
    40 so every node is drawn), and a layer-3 feature that splits across widths into the most children."""
    best = None
    for (f,) in _sql(api, f"SELECT DISTINCT feature_a FROM matches WHERE sae_a = '{BASE.format(layer=2)}' AND "
                          "method = 'decoder_cos' AND score >= 0.7 AND edge_kind(assigned, rank, rank_b) = 'split' "
                          "ORDER BY feature_a LIMIT 40"):
        lin = api.get(f"/api/saes/{BASE.format(layer=2)}/features/{f}/lineage").json()
        kinds = {e["kind"] for e in lin.get("edges", [])}
        n = len(lin.get("nodes", []))
        if {"carry", "split"} <= kinds and n <= 40 and (best is None or n > best[0]):
            best = (n, f)
    if best is None:
        raise SystemExit("no layer-2 feature with a carry and a split in this atlas")
    wide = _sql(api, f"SELECT feature_a FROM widths WHERE sae_a = '{BASE.format(layer=3)}' AND class = 'split' "
                     "ORDER BY n_children DESC, feature_a LIMIT 1")
    return {"stack": f"#/stack/{STACK}", "feature": f"#/feature/{BASE.format(layer=2)}/{best[1]}",
            "lineage-split": f"#/feature/{BASE.format(layer=2)}/{best[1]}",
            "width-tree": f"#/widths/{BASE.format(layer=3)}/{wide[0][0]}" if wide else None}


def main(argv=None) -> int:
    from playwright.sync_api import sync_playwright

    p = argparse.ArgumentParser(prog="python -m bench.screenshots", description=__doc__.splitlines()[0])
    p.add_argument("atlas", type=Path)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs")
    args = p.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with serving(args.atlas) as server, sync_playwright() as pw:
        api = httpx.Client(base_url=server.base, timeout=60)
        views = pick(api)
        browser = pw.chromium.launch(executable_path=chromium, args=FLAGS)
        pg = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        for name, view in views.items():
            if view is None:
                print(f"{name}: nothing to draw in this atlas")
                continue
            pg.goto(server.base + "/" + view)
            _ready(pg, view.split("?")[0][:12])
            if name == "lineage-split":  # the graph alone, large
                pg.locator("#lineage").screenshot(path=str(args.out / f"{name}.png"))
            else:
                pg.screenshot(path=str(args.out / f"{name}.png"), full_page=name != "feature")
            print(f"{name}.png: {view}")
        browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
