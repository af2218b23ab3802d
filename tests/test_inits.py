"""Independent inits (docs/design.md, Independent inits): SAEs a family trains start from their own random
dictionaries, so matching them finds what they learnt, not where they started. Planted: two "layers" that see
nearly the same data and a wider SAE of one, trained from each SAE's own init and, as the control, from one init per
seed; `atlas findings`' same-index share tells the two apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas.match.pair import MatchParams
from atlas.queries.findings import same_index
from atlas.store import Atlas
from atlas_ingest.training import TrainConfig, check_tokens, init_seed, train_sae

D_IN, D_SAE, WIDE = 24, 48, 96


def _acts(n: int = 12_000, n_true: int = 40, seed: int = 0) -> torch.Tensor:
    """Sparse non-negative combinations of n_true planted directions (about 3 active per token)."""
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((n_true, D_IN)).astype(np.float32)
    codes = rng.exponential(1.0, (n, n_true)).astype(np.float32) * (rng.random((n, n_true)) < 3 / n_true)
    return torch.from_numpy(codes @ dirs)


def _family(tmp_path, shared: bool, extra=()) -> dict[tuple, float]:
    """Layers 0 and 1 (nearly the same data) at D_SAE and layer 0 at WIDE, seed 0, ingested and matched; same-index shares."""
    from atlas.queries.selection import select_pairs
    from atlas_ingest.jobs.ingest import ingest
    from atlas_ingest.jobs.match import run_match
    from atlas_ingest.jobs.widths import run_widths
    from atlas_ingest.sources import read_sae

    x = _acts()
    cfg = TrainConfig(d_sae=D_SAE, samples=24_000, batch=256, eval_tokens=1000, l1_coefficient=1.0, shared_init=shared)
    noisy = x + 0.05 * x.std() * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))  # layer 1: near layer 0
    folders = [train_sae(acts, layer, 0, "toy", tmp_path / "saes", cfg, model="toy")[0] for layer, acts in ((0, x), (1, noisy))]
    folders.append(train_sae(x, 0, 0, "toy", tmp_path / "saes", TrainConfig(**{**cfg.__dict__, "d_sae": WIDE}),
                             model="toy")[0])
    atlas = Atlas(tmp_path / "a.duckdb")
    ingest(atlas, [lambda f=f: read_sae(f) for f in [*folders, *extra]])
    with atlas.read() as con:
        adjacent, widths = select_pairs(con, "adjacent"), select_pairs(con, "widths")
    assert len(adjacent) == 1 + max(len(extra) - 1, 0) and len(widths) == 1
    run_match(atlas, adjacent, ["decoder_cos"], MatchParams())
    run_widths(atlas, widths)
    with atlas.read() as con:
        rows = same_index(con, "toy")
    assert {r["kind"] for r in rows} == {"layers", "width children"} and all(r["assigned"] >= 10 for r in rows)
    return {r["kind"]: r["same_index"] for r in rows}


@pytest.mark.parametrize("shared", [False, True], ids=["own-inits", "shared-init-control"])
def test_same_index_share_is_near_chance_unless_inits_are_shared(tmp_path, shared):
    share = _family(tmp_path, shared)
    if shared:  # the confound the default removes: the same starting rows end as the same learnt features
        assert share["layers"] > 0.5 and share["width children"] > 0.25, share  # chance: 2% and 1%
    else:  # chance is 1/48 (layers) and 1/96 (width children): a few coincidences at most
        assert share["layers"] <= 0.1 and share["width children"] <= 0.1, share


def test_init_seed_differs_for_every_axis_of_a_family_and_is_stable():
    base = init_seed(0, "m", "blocks.3.hook_resid_post", 768, "prose")
    others = [init_seed(1, "m", "blocks.3.hook_resid_post", 768, "prose"),
              init_seed(0, "n", "blocks.3.hook_resid_post", 768, "prose"),
              init_seed(0, "m", "blocks.4.hook_resid_post", 768, "prose"),
              init_seed(0, "m", "blocks.3.hook_resid_post", 1536, "prose"),
              init_seed(0, "m", "blocks.3.hook_resid_post", 768, "code")]
    assert len({base, *others}) == 6 and all(0 <= s < 2**63 for s in (base, *others))
    assert base == init_seed(0, "m", "blocks.3.hook_resid_post", 768, "prose")


def test_a_budget_the_held_out_tokens_eat_is_refused_not_looped_on(tmp_path):
    """`atlas minilm --max-tokens 20000` held out all 20,000 tokens and trained forever on an empty tensor."""
    from atlas_ingest.training import _batches

    cfg = TrainConfig(d_sae=8, samples=1000, batch=256, eval_tokens=1000)
    with pytest.raises(ValueError, match=r"leaves 0 to train on.*at least 1,256 tokens"):
        check_tokens(1000, cfg)
    with pytest.raises(ValueError, match="leaves 100 to train on"):
        train_sae(_acts(1100), 0, 0, "toy", tmp_path, cfg, model="toy")
    with pytest.raises(ValueError, match="fewer than one batch"):
        next(_batches(torch.zeros(10, 4), 256, 0))
    assert not list((tmp_path).rglob("atlas_training.json"))


def test_atlas_minilm_refuses_a_budget_the_held_out_tokens_eat_before_any_work(tmp_path):
    from click.testing import CliRunner

    from atlas_cli import main

    r = CliRunner().invoke(main, ["--atlas", str(tmp_path / "a.duckdb"), "minilm", "--max-tokens", "20000",
                                  "--cache", str(tmp_path / "cache")])
    assert r.exit_code == 2
    assert r.output.strip() == ("error: 20,000 tokens of each corpus: the last 20,000 are held out for FVU, L0 and dead "
                                "fraction, which leaves 0 to train on, fewer than one batch (4,096); give at least "
                                "24,096 tokens (--max-tokens)")
    assert not (tmp_path / "cache").exists()  # no activations were computed


def test_findings_report_each_model_on_its_own(tmp_path, family):
    """An atlas holding two families (toy SAEs trained here, a planted stack): one block per model, neither's pairs
    in the other's, the same-index table in each."""
    from click.testing import CliRunner

    from atlas_cli import main

    planted = [f for f in family[1] if f.parent.name == "A-s0"][:2]  # two layers of the planted base stack
    assert len(planted) == 2
    _family(tmp_path, False, extra=planted)
    r = CliRunner().invoke(main, ["--atlas", str(tmp_path / "a.duckdb"), "findings"])
    assert r.exit_code == 0, r.output
    blocks = dict(b.split(" ==\n", 1) for b in r.output.split("== ")[1:])
    assert set(blocks) == {"synth", "toy"}
    for model, text in blocks.items():
        assert "same index (" in text and "layers (distance 1): " in text
        assert "over 1 pairs" in text.split("matched fraction")[1].split("siblings")[0]  # its own layer pair only
    assert "width children" in blocks["toy"] and "width children" not in blocks["synth"]
    assert "shared initialisation?" not in r.output
