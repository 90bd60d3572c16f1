"""Schema fuzzing of the HTTP API: schemathesis generates requests, valid and invalid, from the server's
own OpenAPI document and sends them to the real server on a loopback port. No request may end in a 5xx,
hang, or (streamed) stop before `data: [DONE]`.

CI runs a bounded number of examples per operation and mode (~30 s on 2 cores). For a longer local run:

    ROCMFORGE_FUZZ_EXAMPLES=1000 python -m pytest -q tests/test_server_fuzz.py
"""

from __future__ import annotations

import copy
import os
import time

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

from rocmforge_server.schemas import ROLES  # noqa: E402
from server_harness import ServerThread  # noqa: E402
from tiny_chat_model import make_chat_model  # noqa: E402

EXAMPLES = int(os.environ.get("ROCMFORGE_FUZZ_EXAMPLES", "60"))  # per operation and mode
DERANDOMIZE = "ROCMFORGE_FUZZ_EXAMPLES" not in os.environ  # CI: the same examples every run
REQUEST_TIMEOUT = 20.0  # seconds per request: longer than any generation here, so a timeout is a hang
MAX_TOKENS = 4  # the fuzzer's bodies ask for at most this many tokens (any length is tested elsewhere)
N_CTX = 256  # small, so that a body without max_tokens (negative mode) still ends quickly
PATHS = ("/health", "/v1/models", "/v1/models/{name}", "/v1/chat/completions", "/v1/completions")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = make_chat_model(tmp_path_factory.mktemp("tiny") / "tiny-chat.gguf", n_ctx=N_CTX)
    with ServerThread(path, n_slots=2, n_ctx=N_CTX, max_body_bytes=64 * 1024) as s:
        yield s


def fuzz_document(app) -> dict:
    """The app's OpenAPI document with generation bounded: max_tokens required and small, n <= 2.
    Only the valid values shrink; negative mode still sends out-of-range and missing ones."""
    doc = copy.deepcopy(app.openapi())
    doc["paths"] = {p: ops for p, ops in doc["paths"].items() if p in PATHS}
    schemas = doc["components"]["schemas"]
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        body = schemas[name]
        body["properties"]["max_tokens"] = {"type": "integer", "minimum": 1, "maximum": MAX_TOKENS}
        body["properties"]["n"] = {"type": "integer", "minimum": 1, "maximum": 2}
        body["required"] = sorted({*body.get("required", []), "max_tokens"})
    schemas["ChatCompletionRequest"]["properties"].pop("max_completion_tokens")
    # valid values the document cannot express (checked by validators), so that positive mode mostly
    # reaches generation rather than a 400 or 404
    schemas["ChatMessage"]["properties"]["role"] = {"enum": list(ROLES)}
    schemas["ContentPart"]["properties"]["type"] = {"const": "text"}
    schemas["ContentPart"]["properties"]["text"] = {"type": "string"}
    schemas["ContentPart"]["required"] = ["type", "text"]
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        schemas[name]["properties"]["model"] = {"enum": ["tiny-chat", "tiny", None]}
    return doc


def test_openapi_document_describes_the_bodies(server):
    """The fuzzer needs structured bodies: the POST routes must publish their pydantic models."""
    doc = server.server.config.app.openapi()
    for path, model in (("/v1/chat/completions", "ChatCompletionRequest"), ("/v1/completions",
                                                                            "CompletionRequest")):
        ref = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{model}"
    chat = doc["components"]["schemas"]["ChatCompletionRequest"]
    assert "messages" in chat["required"] and "max_tokens" in chat["properties"]


def check_response(case, response) -> None:
    where = f"{case.method} {case.path} body={case.body!r}"
    assert response.status_code < 500, f"{where} -> {response.status_code} {response.text[:500]}"
    content_type = {k.lower(): v for k, v in response.headers.items()}.get("content-type", [""])[0]
    streamed = content_type.startswith("text/event-stream")
    if response.status_code == 200 and streamed:
        assert response.text.endswith("data: [DONE]\n\n"), f"{where}: stream ended early: {response.text[-300:]}"
    if response.status_code >= 400:
        error = response.json()["error"]  # OpenAI's error shape, never FastAPI's {"detail": ...}
        assert set(error) == {"message", "type", "param", "code"}, where


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_5xx_and_no_hangs(server, mode):
    schema = schemathesis.openapi.from_dict(fuzz_document(server.server.config.app))
    if hasattr(schema.config, "max_stream_events"):
        # schemathesis 4.3x stops reading an event stream after 20 events (a long completion has ~260):
        # read every stream to its end, so "ends with [DONE]" is checked on the whole stream
        schema.config.max_stream_events = 100_000
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} == set(PATHS)
    if mode == GenerationMode.NEGATIVE:  # the GETs take no parameter, or any string: nothing invalid
        operations = [op for op in operations if op.method == "post"]
    counts: dict[str, int] = {}
    statuses: dict[int, int] = {}
    t0 = time.monotonic()
    for operation in operations:

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=DERANDOMIZE,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case):
            response = case.call(base_url=server.url, timeout=REQUEST_TIMEOUT)
            counts[operation.label] = counts.get(operation.label, 0) + 1
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            check_response(case, response)

        fuzz()
    print(f"\n{mode.value}: {counts}, statuses {statuses} in {time.monotonic() - t0:.1f} s")
    # every operation really ran (a strategy that generates nothing would pass vacuously); a GET
    # without parameters has one possible request, which hypothesis sends once
    assert all(counts.get(op.label, 0) >= (min(EXAMPLES, 10) if op.method == "post" else 1)
               for op in operations), counts
    if mode == GenerationMode.POSITIVE:  # and valid bodies really reach generation, not only a 400
        assert statuses.get(200, 0) >= min(EXAMPLES, 10), statuses
    # the server is healthy afterwards and nothing is left running
    runner = server.server.config.app.state.runner
    deadline = time.monotonic() + 10
    while runner.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runner.in_flight == 0 and server.engine.free_slot_count == server.engine.n_slots


def test_text_part_without_text_names_the_missing_field(server):
    """Found by the fuzzer: a text part without its text was refused as an unsupported part type."""
    import httpx

    for part, needle in (({"type": "text"}, "needs its 'text' string"),
                         ({"type": "image_url"}, "of type 'image_url' are not supported")):
        body = {"messages": [{"role": "user", "content": [part]}], "max_tokens": 1}
        response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=REQUEST_TIMEOUT)
        assert response.status_code == 400, response.text
        assert needle in response.json()["error"]["message"]
