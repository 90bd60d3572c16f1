"""rocmforge_core.conversation on a tiny chat model: the overflow error, dropping the oldest exchanges
with the system prompt kept, raw text for a template-less model, and the server using the same rules."""

from __future__ import annotations

import pytest

from rocmforge_core.conversation import fit_conversation, raw_text
from rocmforge_core.engine import ContextOverflowError, Request, create_engine
from tiny_chat_model import make_chat_model

SYSTEM = {"role": "system", "content": "You are terse."}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_chat_model(tmp_path_factory.mktemp("tiny") / "tiny-chat.gguf")


@pytest.fixture(scope="module")
def engine(model_path):
    return create_engine(model_path, backend="cpu", n_ctx=200, n_slots=1)


def long_chat(exchanges: int = 6) -> list[dict]:
    messages = [SYSTEM]
    for i in range(exchanges):
        messages += [{"role": "user", "content": f"Question {i}: what is {i} times {i + 3}?"},
                     {"role": "assistant", "content": f"It is {i * (i + 3)}."}]
    return messages + [{"role": "user", "content": "And 7 times 8?"}]


def test_a_conversation_that_fits_is_the_template_prompt(engine):
    messages = long_chat(1)
    fit = fit_conversation(engine, messages, max_new=16)
    assert fit.ids == engine.prepare_prompt(Request(messages=messages))
    assert fit.messages == messages and fit.dropped == 0


def test_overflow_says_how_far_over_and_leaves_the_messages_alone(engine):
    messages = long_chat()
    before = [dict(m) for m in messages]
    with pytest.raises(ContextOverflowError) as info:
        fit_conversation(engine, messages, max_new=16)
    exc = info.value
    assert exc.n_ctx == 200 and exc.n_tokens > 200 and exc.exit_code == 2
    assert f"{exc.n_tokens - 199} over the context of 200" in exc.message
    assert messages == before


def test_shift_drops_whole_exchanges_oldest_first(engine):
    messages = long_chat()
    fit = fit_conversation(engine, messages, max_new=16, shift=True)
    assert len(fit.ids) + 16 <= 200 and fit.dropped >= 1
    assert fit.messages[0] == SYSTEM and fit.messages[-1] == messages[-1]
    assert fit.messages[1:] == messages[1 + 2 * fit.dropped:]  # a suffix: whole exchanges went
    assert fit.ids == engine.prepare_prompt(Request(messages=fit.messages))


def test_shift_cannot_drop_the_message_being_answered(engine):
    with pytest.raises(ContextOverflowError) as info:
        fit_conversation(engine, [SYSTEM, {"role": "user", "content": "word " * 300}], max_new=8, shift=True)
    assert "does not fit" in info.value.message


def test_raw_text_for_a_model_without_template(engine):
    messages = [{"role": "system", "content": "A story."}, {"role": "user", "content": "Once there was"},
                {"role": "assistant", "content": " a fox."}, {"role": "user", "content": "The fox"}]
    assert raw_text(messages) == "A story.\n\nOnce there was a fox.\nThe fox"
    template, engine.chat_template = engine.chat_template, None
    try:
        fit = fit_conversation(engine, messages, max_new=8)
        assert fit.ids == engine.prepare_prompt(Request(prompt=raw_text(messages)))
        with pytest.raises(Exception, match="no chat template"):
            fit_conversation(engine, messages, max_new=8, raw=False)
    finally:
        engine.chat_template = template


def test_the_server_fits_chats_the_same_way(model_path):
    httpx = pytest.importorskip("httpx")
    from server_harness import ServerThread

    body = {"messages": long_chat(40), "max_tokens": 4, "temperature": 0}
    with ServerThread(model_path, n_slots=1, n_ctx=200) as plain:
        refused = httpx.post(plain.url + "/v1/chat/completions", json=body, timeout=30)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"

    with ServerThread(model_path, n_slots=1, n_ctx=200, context_shift=True) as shifting:
        answered = httpx.post(shifting.url + "/v1/chat/completions", json=body, timeout=30)
    assert answered.status_code == 200, answered.text
    usage = answered.json()["usage"]
    engine = create_engine(model_path, backend="cpu", n_ctx=200, n_slots=1)
    fit = fit_conversation(engine, body["messages"], max_new=4, shift=True)
    assert usage["prompt_tokens"] == len(fit.ids) and usage["completion_tokens"] == 4
