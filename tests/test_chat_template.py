"""Chat templates: SmolLM2's real template, a hand-written Gemma-3 one, the sandbox helpers, errors,
the ChatML fallback rule and override files."""

from __future__ import annotations

import json
import time

import pytest

from rocmforge_core.chat_template import (
    CHATML_TEMPLATE,
    ChatTemplate,
    ChatTemplateError,
    looks_like_chat_model,
    strip_leading_bos,
)
from rocmforge_core.errors import BadInputError

# tokenizer.chat_template of SmolLM2-135M-Instruct.Q4_1.gguf (the default model), copied as test data.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Gemma-3 instruct style, written from its public description: BOS, turns "<start_of_turn>user|model",
# "<end_of_turn>", the system text folded into the first user turn, roles must alternate.
GEMMA3_IT_TEMPLATE = """{{ bos_token }}{% if messages[0]['role'] == 'system' %}
    {% set prefix = messages[0]['content'] | trim + '\n\n' %}
    {% set turns = messages[1:] %}
{% else %}
    {% set prefix = '' %}
    {% set turns = messages %}
{% endif %}
{% for message in turns %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
    {% set role = 'model' if message['role'] == 'assistant' else message['role'] %}
<start_of_turn>{{ role }}
{{ (prefix if loop.first else '') + message['content'] | trim }}<end_of_turn>
{% endfor %}
{% if add_generation_prompt %}
<start_of_turn>model
{% endif %}
"""

GEMMA3_BASE_METADATA = {
    "general.architecture": "gemma3",
    "general.type": "model",
    "general.name": "Gemma 3 270m",
    "general.basename": "gemma-3",
    "general.size_label": "270M",
    "general.tags": ["gemma3", "gemma", "google", "text-generation"],
    "tokenizer.ggml.tokens": ["<pad>", "<eos>", "<bos>", "<unk>"],
    "tokenizer.ggml.bos_token_id": 2,
    "tokenizer.ggml.eos_token_id": 1,
}

USER = {"role": "user", "content": "Name three colors."}
SYSTEM = {"role": "system", "content": "Answer briefly."}


# ---- SmolLM2's real template ------------------------------------------------------------------------


def test_smollm2_without_system_message_gets_its_default_system():
    t = ChatTemplate(SMOLLM2_TEMPLATE)
    assert t.render([USER]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nName three colors.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_smollm2_with_system_message_and_history():
    t = ChatTemplate(SMOLLM2_TEMPLATE)
    messages = [SYSTEM, USER, {"role": "assistant", "content": "Red, green, blue."},
                {"role": "user", "content": "More?"}]
    assert t.render(messages) == (
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n"
        "<|im_start|>user\nName three colors.<|im_end|>\n"
        "<|im_start|>assistant\nRed, green, blue.<|im_end|>\n"
        "<|im_start|>user\nMore?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert not t.render(messages, add_generation_prompt=False).endswith("<|im_start|>assistant\n")


def test_smollm2_real_gguf(smollm2_path):
    from rocmforge_core.gguf_file import GGUFFile

    metadata = GGUFFile(smollm2_path).metadata
    t = ChatTemplate.for_model(metadata)
    assert t.name == "gguf" and t.source == SMOLLM2_TEMPLATE
    assert (t.bos_token, t.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert t.render([SYSTEM, USER]).startswith("<|im_start|>system\nAnswer briefly.<|im_end|>\n")


def test_gemma3_real_gguf_is_a_base_model(gemma3_path):
    from rocmforge_core.gguf_file import GGUFFile

    assert ChatTemplate.for_model(GGUFFile(gemma3_path).metadata) is None


# ---- Gemma-3 instruct style ------------------------------------------------------------------------


def test_gemma3_style_template_renders():
    t = ChatTemplate(GEMMA3_IT_TEMPLATE, bos_token="<bos>")
    messages = [SYSTEM, USER, {"role": "assistant", "content": " Red, green, blue. "},
                {"role": "user", "content": "More?"}]
    want = ("<bos><start_of_turn>user\nAnswer briefly.\n\nName three colors.<end_of_turn>\n"
            "<start_of_turn>model\nRed, green, blue.<end_of_turn>\n"
            "<start_of_turn>user\nMore?<end_of_turn>\n"
            "<start_of_turn>model\n")
    assert t.render(messages) == want
    text, had_bos = strip_leading_bos(t.render(messages), "<bos>")
    assert had_bos and text == want[len("<bos>"):]


def test_gemma3_style_template_rejects_non_alternating_roles():
    t = ChatTemplate(GEMMA3_IT_TEMPLATE)
    with pytest.raises(ChatTemplateError) as info:
        t.render([USER, USER])
    line = info.value.one_line()
    assert "Conversation roles must alternate" in line and info.value.exit_code == 2


# ---- environment helpers ---------------------------------------------------------------------------


def test_raise_exception_is_a_clean_bad_input_error():
    t = ChatTemplate("{% if messages|length == 0 %}{{ raise_exception('No messages given!') }}{% endif %}ok")
    assert t.render([USER]) == "ok"
    with pytest.raises(BadInputError) as info:
        t.render([])
    assert info.value.one_line() == "the chat template rejected the messages: No messages given!"


def test_tojson_keeps_non_ascii_and_takes_indent():
    tools = [{"name": "météo", "description": "天気 🌦 <b>&'"}]
    t = ChatTemplate("{{ tools | tojson }}|{{ tools[0] | tojson(indent=2) }}")
    compact, indented = t.render([USER], tools=tools).split("|")
    assert compact == json.dumps(tools, ensure_ascii=False)
    assert "météo" in compact and "天気 🌦 <b>&'" in compact  # no \\u escapes, no HTML escaping
    assert indented == json.dumps(tools[0], ensure_ascii=False, indent=2)
    assert json.loads(indented) == tools[0]


def test_strftime_now():
    t = ChatTemplate("{{ strftime_now('%Y') }}")
    assert t.render([]) == time.strftime("%Y")


def test_trim_blocks_lstrip_blocks_and_loopcontrols():
    src = ("{% for m in messages %}\n"
           "    {% if m['role'] == 'system' %}{% continue %}{% endif %}\n"
           "[{{ m['content'] }}]\n"
           "    {% if loop.index >= 3 %}{% break %}{% endif %}\n"
           "{% endfor %}\n")
    msgs = [SYSTEM, {"role": "user", "content": "a"}, {"role": "user", "content": "b"},
            {"role": "user", "content": "c"}]
    assert ChatTemplate(src).render(msgs) == "[a]\n[b]\n"


def test_variables_given_to_the_template():
    t = ChatTemplate("{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ tools }}|{{ x }}",
                     bos_token="<s>", eos_token="</s>")
    assert t.render([]) == "<s>|</s>|True|None|"  # an unknown variable prints as nothing, as in HF
    assert t.render([], add_generation_prompt=False, bos_token="", eos_token="E", x=1) == "|E|False|None|1"


def test_common_template_idioms_work_in_the_sandbox():
    # namespace assignment, attribute-style item access, str methods, filters: as Qwen/Llama templates use
    src = ("{%- set ns = namespace(found=false) -%}"
           "{%- for m in messages -%}{%- if m.role == 'system' -%}{%- set ns.found = true -%}{%- endif -%}"
           "{%- endfor -%}"
           "{{ ns.found }}|{{ messages[-1].content.strip().split(' ')[0] }}|"
           "{{ messages | selectattr('role', 'equalto', 'user') | list | length }}|{{ messages[0].content[:3] }}")
    assert ChatTemplate(src).render([SYSTEM, {"role": "user", "content": "  x y"}]) == "True|x|1|Ans"


def test_sandbox_is_immutable():
    t = ChatTemplate("{{ messages.append(1) }}")
    with pytest.raises(BadInputError, match="could not be rendered"):
        t.render([USER])


# ---- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("src", ["{% for m in messages %}{{ m['content'] }}",  # no endfor
                                 "{{ messages[0]['content'] }",
                                 "{% if %}x{% endif %}"])
def test_broken_syntax_fails_at_construction(src):
    with pytest.raises(BadInputError) as info:
        ChatTemplate(src)
    line = info.value.one_line()
    assert line.startswith("the chat template could not be parsed: ")
    assert "line 1 of the model's tokenizer.chat_template" in line
    assert line.endswith("(use --chat-template-file or --raw)") and "\n" not in line


def test_undefined_attribute_at_render_is_bad_input():
    t = ChatTemplate("{{ messages[0].nothing.deeper }}")
    with pytest.raises(BadInputError) as info:
        t.render([USER])
    line = info.value.one_line()
    assert "could not be rendered" in line and "UndefinedError" in line and "--raw" in line


def test_type_error_at_render_is_bad_input():
    t = ChatTemplate("{{ message_count + 'x' }}")
    with pytest.raises(BadInputError, match="could not be rendered"):
        t.render([USER], message_count=3)


# ---- choosing a template --------------------------------------------------------------------------


def test_gguf_template_is_used_when_present():
    t = ChatTemplate.for_model({**GEMMA3_BASE_METADATA, "tokenizer.chat_template": GEMMA3_IT_TEMPLATE})
    assert t.name == "gguf" and t.source == GEMMA3_IT_TEMPLATE
    assert (t.bos_token, t.eos_token) == ("<bos>", "<eos>")  # token texts from the vocabulary
    assert t.render([USER]).startswith("<bos><start_of_turn>user\n")


def test_base_model_without_template_gets_none():
    assert not looks_like_chat_model(GEMMA3_BASE_METADATA)
    assert ChatTemplate.for_model(GEMMA3_BASE_METADATA) is None
    assert ChatTemplate.for_model({**GEMMA3_BASE_METADATA, "tokenizer.chat_template": "  "}) is None


@pytest.mark.parametrize("extra", [
    {"general.finetune": "it"},
    {"general.name": "gemma-3-270m-it"},
    {"general.name": "Qwen2.5 0.5B Instruct"},
    {"general.name": "Mistral-7B-Instruct-v0.2"},
    {"general.name": "Llama 2 7b Chat"},
    {"general.finetune": "SFT"},
    {"general.tags": ["text-generation", "conversational"]},
])
def test_chat_looking_model_without_template_gets_chatml(extra):
    metadata = {**GEMMA3_BASE_METADATA, **extra}
    assert looks_like_chat_model(metadata)
    t = ChatTemplate.for_model(metadata)
    assert t.name == "chatml-fallback" and t.source == CHATML_TEMPLATE
    assert t.render([SYSTEM, USER]) == ("<|im_start|>system\nAnswer briefly.<|im_end|>\n"
                                        "<|im_start|>user\nName three colors.<|im_end|>\n"
                                        "<|im_start|>assistant\n")


@pytest.mark.parametrize("name", ["Gemma 3 270m", "Smollm2 135M 8k Lc100K Mix1 Ep2", "Bitnet b1.58",
                                  "Mixtral 8x7B", "Phi 2", "TinyLlama 1.1B intermediate step"])
def test_base_names_are_not_chat(name):
    assert not looks_like_chat_model({"general.name": name, "general.type": "model"})


def test_override_file_wins(tmp_path):
    path = tmp_path / "tmpl.jinja"
    path.write_text("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}ünï", encoding="utf-8")
    for metadata in (GEMMA3_BASE_METADATA, {"tokenizer.chat_template": SMOLLM2_TEMPLATE}):
        t = ChatTemplate.for_model(metadata, override_file=str(path))
        assert t.name == f"file:{path}"
        assert t.render([USER]) == "<user>Name three colors.ünï"


def test_unreadable_override_file_is_bad_input(tmp_path):
    with pytest.raises(BadInputError, match="cannot read the chat template file .*missing.jinja"):
        ChatTemplate.for_model(GEMMA3_BASE_METADATA, override_file=str(tmp_path / "missing.jinja"))
    with pytest.raises(BadInputError, match="cannot read"):
        ChatTemplate.for_model(GEMMA3_BASE_METADATA, override_file=str(tmp_path))  # a directory
    binary = tmp_path / "bin.jinja"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(BadInputError, match="cannot read"):
        ChatTemplate.for_model(GEMMA3_BASE_METADATA, override_file=str(binary))
    empty = tmp_path / "empty.jinja"
    empty.write_text("\n")
    with pytest.raises(BadInputError, match="is empty"):
        ChatTemplate.for_model(GEMMA3_BASE_METADATA, override_file=str(empty))


def test_broken_override_file_names_the_file(tmp_path):
    path = tmp_path / "broken.jinja"
    path.write_text("line one\n{% if %}")
    with pytest.raises(BadInputError) as info:
        ChatTemplate.for_model(GEMMA3_BASE_METADATA, override_file=str(path))
    assert f"line 2 of {path}" in info.value.one_line()


# ---- BOS handling ---------------------------------------------------------------------------------


def test_strip_leading_bos():
    assert strip_leading_bos("<bos>hello", "<bos>") == ("hello", True)
    assert strip_leading_bos("hello<bos>", "<bos>") == ("hello<bos>", False)
    assert strip_leading_bos("<bos><bos>x", "<bos>") == ("<bos>x", True)  # only one is ours to drop
    assert strip_leading_bos("hello", "") == ("hello", False)
    assert strip_leading_bos(" <bos>x", "<bos>") == (" <bos>x", False)


@pytest.mark.parametrize("escape", [
    "{{ messages.__class__ }}",                      # a dunder at the end of the chain
    "{{ self._TemplateReference__context }}",        # a private attribute of the template's self
    "{{ lipsum.__globals__ }}",                      # a function's globals
    "{{ raise_exception.__code__ }}",
])
def test_sandbox_escapes_are_errors_not_empty_prompts(escape):
    """Jinja's sandbox turns an unsafe attribute into an undefined value, which prints as nothing: the
    escape attempt would pass as an empty prompt. Here it is an error that says what was refused,
    while a merely missing attribute (templates test `message.tool_calls`) still renders empty."""
    template = ChatTemplate(escape + "{{ messages[0].content }}", "file:escape.jinja")
    with pytest.raises(BadInputError, match="unsafe"):
        template.render([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    missing = ChatTemplate("{{ messages[0].tool_calls }}{{ messages[0].content }}", "file:ok.jinja")
    assert missing.render([{"role": "user", "content": "hi"}], add_generation_prompt=True) == "hi"
