"""Bounded schema fuzzing of the REST API's OpenAPI document (schemathesis): no 500, no stack trace.

Requests that schemathesis generates from the served ``/openapi.json`` (valid ones and,
as negative cases, invalid ones) go over real HTTP to a real server with the API and
credentials on. A job that passes validation really runs; to keep the fuzzing bounded the
server accepts images of at most 72 px a side and a small extension refuses jobs of more
than a few dozen denoising steps in all (through the public ``before_generation`` hook,
like any extension's refusal: a 422 with its message).
"""

from __future__ import annotations

import requests
import pytest

from conftest import make_options, start_server

USER, PASSWORD = "fuzz", "fuzz-pass"
REQUESTS_PER_OPERATION = 40  # at most; operations without inputs have few distinct requests: ~1,000 in all
MAX_JOB_STEPS = 40


class StepBudget:
    """Refuses jobs above a step budget (the fuzzer may ask for 100 batches of 500 steps)."""

    from webui.api import hookimpl

    @hookimpl
    def before_generation(self, request, model, context):
        from webui.api import ExtensionError

        total = int(request.steps) * int(request.batch_size) * int(request.batch_count)
        if total > MAX_JOB_STEPS:
            raise ExtensionError(f"this test server runs at most {MAX_JOB_STEPS} steps a job, not {total}")


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    from webui.rest import ApiOptions

    options = make_options(tmp_path_factory.mktemp("fuzz"), model="tiny", max_side=72,
                           extra_plugins={"step_budget": StepBudget()})
    context, blocks, url = start_server(options, api=ApiOptions(credentials=[(USER, PASSWORD)],
                                                               max_body_bytes=1024 * 1024))
    try:
        yield url.rstrip("/")
    finally:
        blocks.close()


@pytest.mark.slow
def test_fuzzing_the_openapi_document_finds_no_server_error(fuzz_server):
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.generation import GenerationMode

    session = requests.Session()
    session.auth = (USER, PASSWORD)
    document = session.get(f"{fuzz_server}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(document)
    sent: list[tuple[str, int]] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    operations = [op for op in operations if op.path.startswith(("/sdapi/", "/easel/"))]
    assert len(operations) >= 20
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=REQUESTS_PER_OPERATION, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def probe(case):
                response = case.call(base_url=fuzz_server, session=session, timeout=120)
                sent.append((f"{case.method} {case.path}", response.status_code))
                text = response.text
                assert response.status_code < 500, (case.method, case.path, case.body, text[:500])
                assert "Traceback" not in text and 'File "/' not in text, text[:500]
                if case.path == "/sdapi/v1/options" and case.method.upper() == "POST":
                    session.post(f"{fuzz_server}/sdapi/v1/options", json={"sd_model_checkpoint": "tiny",
                                                                          "queue.limit": 32}, timeout=30)

            try:
                probe()
            except Exception as exc:
                if "Unsatisfiable" in type(exc).__name__:
                    continue  # no invalid input exists for an operation without parameters
                raise
    print(f"{len(sent)} requests; status codes: "
          f"{sorted({status for _, status in sent})}")
    assert len(sent) >= 800
    assert session.get(f"{fuzz_server}/sdapi/v1/progress", timeout=30).status_code == 200
