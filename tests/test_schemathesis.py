"""Schemathesis against the app's own OpenAPI document: no 5xx, no answer outside the documented schemas.

Bounded (a few examples per operation) so it stays quick; run `schemathesis run --checks all` against a
served atlas for the long version.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from api.app import create_app
from api.settings import Settings


@pytest.fixture(scope="module")
def api_schema(synth_atlas):
    app = create_app(synth_atlas.path, Settings(sql_time_limit_s=1.0, query_time_limit_s=3.0, sql_workers=1))
    return schemathesis.openapi.from_asgi("/schema/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_every_operation_conforms_to_the_document(case):
    case.call_and_validate()
