"""Schemathesis against the live OpenAPI schema: generated requests, valid and invalid, get answers the
schema documents (status codes, bodies, content types), never a 500. Bounded and derandomized, so the
run takes a few seconds and fails the same way twice."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings

from seekrec.serving.app import create_app
from seekrec.serving.settings import ServeSettings

schemathesis = pytest.importorskip("schemathesis")

EXAMPLES = 12  # per operation


@pytest.fixture
def client(settings: ServeSettings) -> TestClient:
    with TestClient(create_app(settings)) as c:  # one lifespan for the whole run: the model loads once
        yield c


@pytest.mark.filterwarnings("ignore:Setting per-request cookies")
def test_every_operation_matches_the_live_schema(client: TestClient) -> None:
    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/recommend", "/events", "/items", "/version"}
    for operation in operations:
        @given(case=operation.as_strategy())
        @hypothesis_settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                             suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            response = client.request(**case.as_transport_kwargs(base_url=str(client.base_url)))
            case.validate_response(response)

        check()
