"""Schemathesis against the app's own OpenAPI document with every check (`--checks all`: no 5xx, no answer
outside the documented schemas, no schema-valid request refused, schema-invalid ones refused, 405 with
Allow for methods a path lacks), bounded: a few examples per operation, positive and negative.

Two exceptions to "schema-valid means accepted", each skipping that one check: free-form SQL (a string can be any
text, and text that does not parse is a 400 that no schema can foresee), and the routes whose score bar takes any
method (lineage, steering, the Neuronpedia lineage and pair lists): a tau's range depends on ?method= (cosines -1..1,
MSE >= 0) and tau and quantile are alternatives, which no one parameter's schema can say (atlas.methods.Threshold.of
checks them, once, for the API, the CLI and notebooks alike).
"""

from __future__ import annotations

import re

import hypothesis.errors
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from atlas_api.app import create_app
from atlas_api.settings import Settings

EXAMPLES = 8
load_all_checks()
ALL_CHECKS = CHECKS.get_all()


@pytest.fixture(scope="module")
def operations(synth_atlas):
    app = create_app(synth_atlas.path, Settings(sql_time_limit_s=1.0, query_time_limit_s=3.0, sql_workers=1))
    schema = schemathesis.openapi.from_asgi("/schema/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


def takes_any_bar(operation: dict) -> bool:
    """Whether an operation's score bar takes any method: its parameters are atlas_api.params.THRESHOLD's (?quantile=)."""
    return any(p.get("name") == "quantile" for p in operation.get("parameters", []))


def _failures(op, mode) -> list[str]:
    found: list[str] = []
    excluded = [positive_data_acceptance] if op.path == "/api/sql" or takes_any_bar(op.definition.raw) else []

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              phases=[Phase.explicit, Phase.generate], database=None)
    def run(case):
        try:
            case.call_and_validate(checks=ALL_CHECKS, excluded_checks=excluded)
        except Exception as e:  # noqa: BLE001  (collected: one report for every operation)
            found.append(f"{op.label}: {e}")

    try:
        run()
    except hypothesis.errors.Unsatisfiable:  # no invalid input exists (an operation without parameters)
        pass
    return found


def test_every_operation_conforms_to_the_document(operations):
    assert len(operations) >= 20
    failures = [f for op in operations for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
                for f in _failures(op, mode)]
    assert not failures, "\n\n".join(failures[:5])


CLI_CONFIG = """
checks.enabled = true  # every check, as `--checks all`

[[operations]]  # free-form SQL: text that does not parse is a 400 no schema can foresee (see above)
include-path = "/api/sql"
checks.positive_data_acceptance.enabled = false

[[operations]]  # a score bar of any method: its range depends on ?method= (see above)
include-path-regex = '{paths}'  # a literal string: the regex's backslashes stay
checks.positive_data_acceptance.enabled = false
"""


def test_schemathesis_cli_with_every_check_passes(synth_atlas, tmp_path):
    """Schemathesis's own command line against `atlas serve` (issue 31: OPTIONS /api/sql said `Allow: GET, OPTIONS`
    while its 405 said POST too, OPTIONS /api/search left out GET, steering?format=safetensors answered an
    undocumented media type, the Neuronpedia pair list refused a tau its schema allowed): every phase, every
    check, a few cases per operation."""
    import subprocess
    import sys
    from pathlib import Path

    from litestar.testing import TestClient

    from bench.server import serving

    with TestClient(create_app(synth_atlas.path)) as c:
        document = c.get("/schema/openapi.json").json()
    paths = [path for path, ops in document["paths"].items() if any(takes_any_bar(op) for op in ops.values())]
    config = tmp_path / "schemathesis.toml"
    config.write_text(CLI_CONFIG.replace("{paths}", "^(" + "|".join(re.escape(p) for p in paths) + ")$"))
    cli = Path(sys.executable).with_name("schemathesis")
    with serving(synth_atlas.path, "--sql-time-limit", "1", "--sql-workers", "1", "--query-time-limit", "3") as server:
        out = subprocess.run([str(cli), "--config-file", str(config), "run", f"{server.base}/schema/openapi.json",
                              "--max-examples", "5", "--seed", "1", "--workers", "1", "--no-color",
                              "--generation-database", "none", "--request-timeout", "30"],
                             capture_output=True, text=True, timeout=600, cwd=tmp_path)
    tail = out.stdout[-6000:]
    assert out.returncode == 0, tail
    assert " passed" in tail and "failure" not in tail.split("SUMMARY")[-1], tail
