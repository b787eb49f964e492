"""Property-based tests of the HTTP API from its own OpenAPI schema (schemathesis): requests generated for every
operation, valid and invalid, must never get a 5xx, and every answer must be one the schema declares (status
code, content type, headers, body).

The app is ``create_app``'s, in process, with the tests' recording dispatcher (nothing trains) and an API key
sent as ``Authorization: Bearer``. Hypothesis settings keep the run well under a minute on two cores.
"""

from __future__ import annotations

import time

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.python.asgi import shutdown_lifespans

from tests.service.conftest import new_key

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 150  # valid and invalid requests together
OPERATIONS = {
    "GET /healthz", "GET /readyz", "GET /v1/jobs", "POST /v1/jobs", "GET /v1/jobs/{job_id}", "DELETE /v1/jobs/{job_id}",
    "GET /v1/jobs/{job_id}/artifacts", "GET /v1/jobs/{job_id}/artifacts/{name}",
}


@pytest.fixture
def api(make_client, make_settings):
    """The app's schema, read from the app itself, and an API key. Small limits, so that generated bodies reach
    them; no reconciler, so that only requests change the database."""
    settings = make_settings(max_json_bytes=20_000, max_upload_bytes=100_000, reconcile_interval_s=0)
    client = make_client(settings)  # runs the lifespan: the database is migrated before a key is made
    key = new_key(client, "alice")
    yield schemathesis.openapi.from_asgi("/openapi.json", client.app), key
    shutdown_lifespans()  # schemathesis keeps the lifespan of an app it called running until the process exits


def fuzz(operation, key: str) -> None:
    """Requests for ``operation``, as the schema allows and as it does not, each answered as the schema says."""
    cases = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in GenerationMode))

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(case=cases)
    def run(case) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=CHECKS)

    run()


def test_every_operation_answers_as_its_schema_says(api):
    """Each operation is fuzzed on its own, so that one failing does not hide another."""
    schema, key = api
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {operation.label for operation in operations} >= OPERATIONS
    failures = {}
    for operation in operations:
        started = time.perf_counter()
        try:
            fuzz(operation, key)
        except (Exception, BaseExceptionGroup) as error:  # schemathesis's FailureGroup is a BaseExceptionGroup
            failures[operation.label] = f"{error}"[:3000]
        assert time.perf_counter() - started < 60, f"{operation.label} took too long"
    assert not failures, "\n\n".join(f"--- {label}\n{message}" for label, message in failures.items())
