"""Work bounded before the context check: a prompt too long for any tokenization is refused before
tokenizing, and chat templates render under step, time and size limits (rocmforge_core/chat_template.py)."""

from __future__ import annotations

import time

import pytest

from cli_run import assert_one_line_error, run_main
from tiny_byte_model import write_byte_model

from rocmforge_core.chat_template import ChatTemplate, TemplateLimitError
from rocmforge_core.engine import ContextOverflowError, Request, create_engine

MESSAGES = [{"role": "user", "content": "hi"}]

HOSTILE = {
    "nested_range": ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
                     "more than 1,000,000 steps"),
    "huge_repeat": ("{{ 'x'*3*10**8 }}", "would build a string or list of 300,000,000 items"),
    "lipsum": ("{{ lipsum(n=100000) }}", "asked lipsum\\(\\) for about 80,000,000 characters"),
    "wide_filter": ("{{ 'x'|center(10**9) }}", "passed a function the number 1,000,000,000"),
    "huge_power": ("{{ 10**(10**10) }}", "would compute a number of"),
    "big_range": ("{{ range(10**6)|length }}", "range of 1,000,000 items"),
    "long_output": ("{% for i in range(99999) %}{{ 'y' * 1000 }}{% endfor %}", "rendered more than"),
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_templates_stop_fast(case):
    source, needle = HOSTILE[case]
    start = time.perf_counter()
    with pytest.raises(TemplateLimitError, match=needle):
        ChatTemplate(source, "file:hostile.jinja").render(MESSAGES)
    assert time.perf_counter() - start < 5


def test_ordinary_templates_still_render():
    source = ("{% for m in messages %}{{ m['role'] }}: {{ m.content }}|{% endfor %}"
              "{{ range(3)|list }}{{ range(4)|reverse|list }}{{ (range(10))[2] }}{{ 2 in range(3) }}"
              "{{ 'ab' * 2 }}{{ lipsum(1, html=False)|length > 0 }}")
    out = ChatTemplate(source).render(MESSAGES * 3)
    assert out == "user: hi|" * 3 + "[0, 1, 2][3, 2, 1, 0]2TrueababTrue"


def test_output_limit_is_the_callers():
    with pytest.raises(TemplateLimitError, match="rendered more than 102 characters .the limit is 100"):
        ChatTemplate("{% for i in range(20) %}{{ 'abcdef' }}{% endfor %}").render(MESSAGES, max_chars=100)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_byte_model(tmp_path_factory.mktemp("m") / "bytes.gguf", context_length=64)


def test_a_long_prompt_is_refused_before_tokenizing(model, monkeypatch):
    engine = create_engine(model, backend="cpu", n_ctx=64)
    per = engine.tokenizer.max_token_bytes
    assert per == 16  # "</s>": 4 characters, at most 4 bytes each

    def no_encode(*args, **kwargs):
        raise AssertionError("tokenized a prompt that cannot fit")

    monkeypatch.setattr(engine.tokenizer, "encode", no_encode)
    start = time.perf_counter()
    with pytest.raises(ContextOverflowError, match=r"the prompt is 30,000,000 bytes: more than the 64-token "
                                                   r"context can hold at 16 bytes per token at most \(1,024 bytes\)"):
        engine.prepare_prompt(Request(prompt="é" * 15_000_000))
    assert time.perf_counter() - start < 2
    with pytest.raises(ContextOverflowError, match="1,025 bytes"):
        engine.prepare_prompt(Request(prompt="x" * 1025))
    with pytest.raises(AssertionError, match="tokenized"):  # at the bound it is tokenized (and counted)
        engine.prepare_prompt(Request(prompt="x" * 1024))


def test_the_cli_refuses_both_in_one_line(model, tmp_path):
    result = run_main("generate", str(model), "--ctx", "64", "--raw", "--backend", "cpu", "-n", "1",
                      stdin="x" * 5000)
    assert_one_line_error(result, "the prompt is 5,000 bytes")
    template = tmp_path / "hostile.jinja"
    template.write_text(HOSTILE["nested_range"][0])
    result = run_main("generate", str(model), "--ctx", "64", "--backend", "cpu", "-n", "1",
                      "--chat-template-file", str(template), "--prompt", "hi")
    assert_one_line_error(result, "more than 1,000,000 steps")
