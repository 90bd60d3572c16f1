"""Slash commands of `rocmforge chat` without a terminal: parsing, dispatch, /save-/load files,
multi-line input assembly and the raw-completion prompt of template-less models."""

from __future__ import annotations

import copy
import json
import re

import pytest

from rocmforge_cli import slash
from rocmforge_cli.repl import raw_document


def make_state(**overrides) -> slash.ChatState:
    model = slash.ModelInfo(name="TinyChat", path="/models/tiny.gguf", architecture="llama", backend="cpu",
                            backend_reason="requested", n_ctx=2048, template_name="gguf",
                            template_source="{{ messages }}")
    state = slash.ChatState(model=model, max_tokens=256)
    for key, value in overrides.items():
        setattr(state, key, value)
    return state


def chatted(state: slash.ChatState) -> slash.ChatState:
    state.messages += [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there!"},
                       {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."}]
    return state


# ---- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("line, expected", [
    ("/help", True), ("  /set temp 1", True), ("hello /there", False), ("//etc/passwd is a file", False),
    ("", False), ("/", True),
])
def test_is_command(line, expected):
    assert slash.is_command(line) is expected


def test_double_slash_sends_a_literal_slash():
    assert slash.unescape("//usr/bin holds programs") == "/usr/bin holds programs"
    assert slash.unescape("plain text") == "plain text"


def test_parse_lowercases_the_name_and_keeps_the_argument():
    assert slash.parse("/SET Temperature 0.5 ") == ("set", "Temperature 0.5")
    assert slash.parse("/system You are Terse.") == ("system", "You are Terse.")
    assert slash.parse("/bye") == ("bye", "")


# ---- dispatch ------------------------------------------------------------------------------------


def test_unknown_command_is_one_line_error_and_changes_nothing():
    state = chatted(make_state())
    before = copy.deepcopy(state)
    outcome = slash.dispatch(state, "/frobnicate now")
    assert outcome.error == "unknown command /frobnicate (type /help for the list)"
    assert outcome.action is None and "\n" not in outcome.error
    assert state == before


def test_help_lists_every_command():
    text = slash.dispatch(make_state(), "/help").message
    for name in ("/help", "/bye", "/exit", "/clear", "/regen", "/system", "/set", "/show", "/stats",
                 "/save", "/load", '"""'):
        assert name in text
    assert slash.dispatch(make_state(), "/?").message == text


@pytest.mark.parametrize("line", ["/bye", "/exit", "/quit", "/EXIT"])
def test_exit_commands(line):
    assert slash.dispatch(make_state(), line).action == slash.EXIT


def test_clear_forgets_turns_but_keeps_the_system_prompt():
    state = chatted(make_state(system="Be brief."))
    state.last_stats = "ttft 1 ms"
    outcome = slash.dispatch(state, "/clear")
    assert outcome.action == slash.CLEAR
    assert state.messages == [] and state.last_stats is None
    assert state.conversation() == [{"role": "system", "content": "Be brief."}]
    assert "system prompt kept" in outcome.message


def test_regen_drops_the_last_reply():
    state = chatted(make_state())
    outcome = slash.dispatch(state, "/regen")
    assert outcome.action == slash.REGEN
    assert state.messages[-1] == {"role": "user", "content": "Name a colour."}
    assert len(state.messages) == 3


def test_regen_after_a_failed_turn_answers_the_waiting_message():
    state = make_state(messages=[{"role": "user", "content": "Hello"}])
    assert slash.dispatch(state, "/regen").action == slash.REGEN
    assert state.messages == [{"role": "user", "content": "Hello"}]


def test_regen_with_nothing_said_is_an_error():
    outcome = slash.dispatch(make_state(), "/regen")
    assert outcome.error.startswith("nothing to regenerate") and outcome.action is None


def test_system_sets_shows_and_removes():
    state = make_state()
    assert slash.dispatch(state, "/system").message == "system prompt: (none)"
    assert slash.dispatch(state, "/system You answer in French.").message == "system prompt set"
    assert state.conversation()[0] == {"role": "system", "content": "You answer in French."}
    assert slash.dispatch(state, "/system").message == "system prompt: You answer in French."
    assert slash.dispatch(state, '/system ""').message == "system prompt removed"
    assert state.system is None and state.conversation() == []
    slash.dispatch(state, "/set system Talk like a pirate.")
    assert state.system == "Talk like a pirate."


@pytest.mark.parametrize("line, key, value", [
    ("/set temperature 0.3", "temperature", 0.3), ("/set temp 0", "temperature", 0.0),
    ("/set --top-k 5", "top_k", 5), ("/set top-p 0.5", "top_p", 0.5), ("/set min_p 0", "min_p", 0.0),
    ("/set repeat_penalty 1.1", "repeat_penalty", 1.1), ("/set repeat-last-n -1", "repeat_last_n", -1),
    ("/set seed 42", "seed", 42), ("/set seed random", "seed", None),
])
def test_set_sampling_params(line, key, value):
    state = make_state()
    outcome = slash.dispatch(state, line)
    assert outcome.error is None
    assert state.sampling[key] == value
    assert state.sampling_params().validate()  # the dict still builds valid SamplingParams


def test_set_max_tokens():
    state = make_state()
    assert slash.dispatch(state, "/set max_tokens 12").message == "max_tokens = 12"
    assert state.max_tokens == 12
    assert slash.dispatch(state, "/set n 0").error == "max_tokens must be at least 1 (got 0)"
    assert state.max_tokens == 12


@pytest.mark.parametrize("line, fragment", [
    ("/set", "usage: /set PARAM VALUE"),
    ("/set temperature", "usage: /set PARAM VALUE"),
    ("/set warmth 2", "unknown parameter 'warmth'"),
    ("/set temperature -1", "--temperature must be >= 0"),
    ("/set top_p 1.5", "--top-p must be in (0, 1]"),
    ("/set top_k many", "top_k needs a whole number (got 'many')"),
    ("/set temperature hot", "temperature needs a number (got 'hot')"),
    ("/set temperature nan", "--temperature"),
])
def test_set_rejects_bad_arguments_and_keeps_the_old_value(line, fragment):
    state = make_state()
    before = dict(state.sampling)
    outcome = slash.dispatch(state, line)
    assert outcome.error is not None and fragment in outcome.error
    assert "\n" not in outcome.error
    assert state.sampling == before


def test_show_params_model_and_template():
    state = make_state()
    slash.dispatch(state, "/set temperature 0.25")
    params = slash.dispatch(state, "/show params").message
    assert "temperature" in params and "0.25" in params
    assert "max_tokens" in params and "256" in params and "2048" in params
    assert "seed" in params and "random" in params
    model = slash.dispatch(state, "/show model").message
    for text in ("TinyChat", "/models/tiny.gguf", "llama", "cpu (requested)", "2048"):
        assert text in model
    template = slash.dispatch(state, "/show template").message
    assert "{{ messages }}" in template and "gguf" in template


def test_show_template_of_a_model_without_one():
    state = make_state()
    state.model.template_name = state.model.template_source = None
    assert "raw completion mode" in slash.dispatch(state, "/show template").message
    assert "raw completion mode" in slash.dispatch(state, "/show model").message


@pytest.mark.parametrize("line", ["/show", "/show weights"])
def test_show_needs_a_known_topic(line):
    assert slash.dispatch(make_state(), line).error == "usage: /show info|params|system|template|model"


# ---- ollama's spellings ----------------------------------------------------------------------------


@pytest.mark.parametrize("line, key, value", [
    ("/set parameter temperature 0.2", "temperature", 0.2), ("/set parameter top_k 7", "top_k", 7),
    ("/set parameter top_p 0.5", "top_p", 0.5), ("/set parameter min_p 0.1", "min_p", 0.1),
    ("/set parameter repeat_penalty 1.2", "repeat_penalty", 1.2),
    ("/set parameter repeat_last_n 32", "repeat_last_n", 32), ("/set PARAMETER seed 9", "seed", 9),
])
def test_set_parameter_uses_ollamas_names(line, key, value):
    state = make_state()
    outcome = slash.dispatch(state, line)
    assert outcome.error is None and state.sampling[key] == value


def test_set_parameter_num_predict_is_max_tokens():
    state = make_state()
    assert slash.dispatch(state, "/set parameter num_predict 64").message == "max_tokens = 64"
    assert state.max_tokens == 64


@pytest.mark.parametrize("line, fragment", [
    ("/set parameter", "usage: /set parameter NAME VALUE"),
    ("/set parameter top_k", "usage: /set parameter NAME VALUE"),
    ("/set parameter mirostat 1", "unknown parameter 'mirostat'"),
    ("/set parameter top_p 1.5", "--top-p must be in (0, 1]"),
    ("/set parameter temperature warm", "temperature needs a number (got 'warm')"),
    ("/set parameter num_predict 0", "max_tokens must be at least 1"),
    ("/set parameter num_ctx 8192", "num_ctx cannot change during a chat"),
])
def test_set_parameter_bad_values_are_one_line_and_change_nothing(line, fragment):
    state = make_state()
    before = copy.deepcopy(state)
    outcome = slash.dispatch(state, line)
    assert outcome.error is not None and fragment in outcome.error and "\n" not in outcome.error
    assert state == before


def test_num_ctx_refusal_says_how_to_change_it():
    error = slash.dispatch(make_state(), "/set parameter num_ctx 8192").error
    assert "2048" in error and "--ctx" in error


def test_verbose_quiet_wordwrap_and_markdown_switches():
    state = make_state()
    assert slash.dispatch(state, "/set verbose").message.startswith("stats on") and state.show_stats
    assert slash.dispatch(state, "/set quiet").message == "stats off" and not state.show_stats
    assert slash.dispatch(state, "/set nowordwrap").error is None and not state.display.wordwrap
    assert slash.dispatch(state, "/set wordwrap").error is None and state.display.wordwrap
    assert slash.dispatch(state, "/set nomarkdown").error is None and not state.display.markdown
    assert slash.dispatch(state, "/set Markdown").error is None and state.display.markdown
    assert "usage: /set PARAM VALUE" in slash.dispatch(state, "/set verbose yes").error


def test_show_info_reports_what_the_model_is_and_how_it_runs():
    state = make_state()
    state.model.parameters, state.model.quantization, state.model.context_length = 134_515_008, "Q4_1", 8192
    info = slash.dispatch(state, "/show info").message
    for pattern in (r"architecture\s+llama", r"parameters\s+135M", r"quantization\s+Q4_1",
                    r"context length\s+8192", r"ctx\s+2048", r"backend\s+cpu \(requested\)"):
        assert re.search(pattern, info), pattern


def test_show_info_leaves_out_what_is_not_known():
    info = slash.dispatch(make_state(), "/show info").message
    assert "architecture" in info and "parameters" not in info and "quantization" not in info


def test_show_system_and_show_parameters():
    state = make_state()
    assert "no system prompt" in slash.dispatch(state, "/show system").message
    slash.dispatch(state, "/system Be brief.")
    assert slash.dispatch(state, "/show system").message == "Be brief."
    assert slash.dispatch(state, "/show parameters").message == slash.dispatch(state, "/show params").message


def test_file_facts_of_a_gguf(tmp_path):
    from tiny_chat_model import make_chat_model
    from rocmforge_core.gguf_file import GGUFFile

    facts = slash.file_facts(GGUFFile(make_chat_model(tmp_path / "tiny.gguf", n_ctx=512)))
    assert facts["context_length"] == 512 and facts["quantization"] == "F32" and facts["parameters"] > 0


def test_format_parameters():
    assert [slash.format_parameters(n) for n in (134_515_008, 7_241_732_096, 950, 12_000)] == \
        ["135M", "7.24B", "950", "12K"]


def test_stats_toggles_and_shows_the_last_reply():
    state = make_state()
    state.last_stats = "ttft 12 ms · prompt 5 tok"
    outcome = slash.dispatch(state, "/stats")
    assert state.show_stats and "ttft 12 ms" in outcome.message
    assert slash.dispatch(state, "/stats").message == "stats off" and not state.show_stats


# ---- /save and /load -------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    state = chatted(make_state(system="Be brief."))
    slash.dispatch(state, "/set temperature 0.1")
    slash.dispatch(state, "/set max_tokens 99")
    path = tmp_path / "conv.json"
    assert slash.dispatch(state, f"/save {path}").message == f"saved 5 messages to {path}"
    data = json.loads(path.read_text())
    assert data["messages"][0] == {"role": "system", "content": "Be brief."}
    assert data["messages"][-1] == {"role": "assistant", "content": "Red."}
    assert data["params"]["temperature"] == 0.1 and data["params"]["max_tokens"] == 99

    fresh = make_state()
    assert slash.dispatch(fresh, f"/load {path}").message == f"loaded 5 messages from {path}"
    assert fresh.conversation() == state.conversation()
    assert fresh.sampling == state.sampling and fresh.max_tokens == 99
    assert slash.to_json(fresh) == data


def test_save_handles_quoted_paths_with_spaces(tmp_path):
    state = chatted(make_state())
    path = tmp_path / "my chats" / "a b.json"
    path.parent.mkdir()
    assert slash.dispatch(state, f'/save "{path}"').error is None
    assert len(json.loads(path.read_text())["messages"]) == 4
    assert slash.dispatch(state, f"/save {path}").error.startswith("usage: /save FILE")


def test_save_errors_are_one_line(tmp_path):
    state = chatted(make_state())
    assert slash.dispatch(state, "/save").error == "usage: /save FILE"
    outcome = slash.dispatch(state, f"/save {tmp_path}/no/such/dir/c.json")
    assert outcome.error.startswith("cannot write") and "\n" not in outcome.error
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("x")  # a non-empty directory cannot be replaced by a file
    outcome = slash.dispatch(chatted(make_state()), f"/save {target}")
    assert outcome.error.startswith(f"cannot write {target}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert (target / "keep.txt").read_text() == "x"


@pytest.mark.parametrize("content, fragment", [
    (None, "cannot read"),
    ("{not json", "is not JSON"),
    ('["a", "list"]', "not a rocmforge chat file"),
    ('{"messages": [{"role": "wizard", "content": "x"}]}', "message 1 needs a role"),
    ('{"messages": [{"role": "user", "content": 3}]}', "message 1 needs a role"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}',
     "a system message may only come first"),
    ('{"messages": [], "params": {"temperature": -2}}', "--temperature must be >= 0"),
    ('{"messages": [], "params": {"temperature": "hot"}}', "bad parameter value"),
    # values that used to pass and then break the next reply (issue #9)
    ('{"messages":[],"params":{"repeat_last_n":2.5,"repeat_penalty":1.1}}',
     "--repeat-last-n must be a whole number (got 2.5)"),
    ('{"messages": [], "params": {"top_k": 1.5}}', "--top-k must be a whole number (got 1.5)"),
    ('{"messages": [], "params": {"seed": 1.5}}', "--seed must be a whole number (got 1.5)"),
    ('{"messages": [], "params": {"seed": 1e400}}', "--seed must be a whole number (got inf)"),
    ('{"messages": [], "params": {"seed": 123456789012345678901234567890}}', "--seed must fit in 64 bits"),
    ('{"messages": [], "params": {"temperature": true}}', "--temperature must be a number (got True)"),
    ('{"messages": [], "params": {"top_p": null}}', "--top-p must be a number (got None)"),
    ('{"messages": [], "params": {"min_p": NaN}}', "--min-p must be in [0, 1] (got nan)"),
    ('{"messages": [], "params": {"presence_penalty": Infinity}}', "presence_penalty must be a finite number"),
    ('{"messages": [], "params": {"top_k": 99999999999}}', "--top-k must be <= 2147483647"),
    ('{"messages": [], "params": {"max_tokens": true}}', "max_tokens must be a whole number"),
    ('{"messages": [], "params": {"max_tokens": 2.0}}', "max_tokens must be a whole number"),
    ('{"messages": [{"role": "user", "content": "a", "extra": 1}]}', "message 1 has unknown field(s) 'extra'"),
    ('{"messages": [], "colour": "red"}', "unknown field(s) 'colour'"),
    ('{"format": "other-chat", "messages": []}', "\"format\" is 'other-chat'"),
    ('{"format": "rocmforge-chat", "version": 2, "messages": []}', "version 2 is not one this rocmforge reads"),
    ('{"version": "1", "messages": []}', "version '1' is not one"),
    ('{"model": 5, "messages": []}', '"model" must be a text name'),
    ("[" * 100_000 + "]" * 100_000, "nested 100000 deep"),
    ('{"messages": [{"role": "user", "content": "' + "[" * 50 + '"}], "params": {"x": [[[[[[[[[1]]]]]]]]]}}',
     "nested 11 deep"),
    (b"\xff\xfe not utf-8", "cannot read"),
    ('{"messages": [], "params": {"warmth": 1}}', "unknown parameter(s) warmth"),
    ('{"messages": [], "params": {"max_tokens": 0}}', "max_tokens must be a whole number"),
    ('{"messages": [], "params": []}', '"params" must be an object'),
])
def test_load_rejects_bad_files_and_keeps_the_conversation(tmp_path, content, fragment):
    path = tmp_path / "bad.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    state = chatted(make_state(system="Keep me."))
    before = copy.deepcopy(state)
    outcome = slash.dispatch(state, f"/load {path}")
    assert outcome.error is not None and fragment in outcome.error, outcome.error
    assert "\n" not in outcome.error
    assert state == before


def test_depth_is_measured_outside_strings():
    assert slash._nesting_depth('{"a": "[[[[{{{{", "b": [1, {"c": "]]]\\"]"}]}') == 3
    assert slash._nesting_depth("7") == 0


@pytest.mark.timeout(20)  # a read of /dev/zero or a FIFO would never return
@pytest.mark.parametrize("kind", ["/dev/zero", "fifo", "directory", "too large"])
def test_load_refuses_what_is_not_a_small_regular_file_without_reading_it(tmp_path, kind):
    import os

    if kind == "/dev/zero":
        path = "/dev/zero"
    elif kind == "fifo":
        path = tmp_path / "pipe"
        os.mkfifo(path)
    elif kind == "directory":
        path = tmp_path
    else:
        path = tmp_path / "big.json"
        with open(path, "wb") as f:
            f.truncate(slash.MAX_FILE_BYTES + 1)  # sparse: no 16 MiB written
    state = chatted(make_state())
    before = copy.deepcopy(state)
    outcome = slash.dispatch(state, f"/load {path}")
    fragment = "a chat file is at most 16 MiB" if kind == "too large" else "not a regular file"
    assert outcome.error is not None and fragment in outcome.error, outcome.error
    assert "\n" not in outcome.error and state == before


def test_save_with_a_245_character_name(tmp_path):
    state = chatted(make_state())
    path = tmp_path / ("c" * 240 + ".json")
    assert len(path.name) == 245
    assert slash.dispatch(state, f"/save {path}").error is None
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    fresh = make_state()
    assert slash.dispatch(fresh, f"/load {path}").error is None
    assert fresh.conversation() == state.conversation()


def test_save_with_a_name_too_long_is_one_line_and_loses_nothing(tmp_path):
    state = chatted(make_state())
    before = copy.deepcopy(state)
    outcome = slash.dispatch(state, f"/save {tmp_path / ('c' * 300)}")
    assert outcome.error.startswith("cannot write") and "name too long" in outcome.error.lower()
    assert "\n" not in outcome.error and state == before
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["chmod 555", "/sys"])
def test_save_into_a_read_only_directory_is_one_line_and_loses_nothing(tmp_path, where):
    import os

    if where == "/sys":  # sysfs refuses new files even to root
        directory = "/sys"
    else:
        directory = tmp_path / "ro"
        directory.mkdir()
        directory.chmod(0o555)
        if os.access(directory, os.W_OK):  # root ignores the mode bits
            pytest.skip("running as root: a mode-555 directory is still writable")
    state = chatted(make_state())
    before = copy.deepcopy(state)
    outcome = slash.dispatch(state, f"/save {directory}/chat.json")
    assert outcome.error is not None and outcome.error.startswith(f"cannot write {directory}/chat.json")
    assert "\n" not in outcome.error and state == before
    assert not os.path.exists(f"{directory}/chat.json")


def test_save_replaces_an_older_file_whole(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("old")
    state = chatted(make_state())
    assert slash.dispatch(state, f"/save {path}").error is None
    assert len(json.loads(path.read_text())["messages"]) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]


def test_load_without_params_keeps_the_current_ones(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}]}))
    state = make_state(system="Old system prompt.")
    slash.dispatch(state, "/set top_k 7")
    slash.dispatch(state, f"/load {path}")
    assert state.conversation() == [{"role": "user", "content": "Hi"}]
    assert state.sampling["top_k"] == 7


# ---- multi-line input --------------------------------------------------------------------------------


def test_plain_lines_pass_through():
    lines = slash.LineAssembler()
    assert lines.feed("hello") == "hello"
    assert not lines.in_block


def test_triple_quote_block():
    lines = slash.LineAssembler()
    assert lines.feed('"""') is None and lines.in_block
    assert lines.feed("first line") is None
    assert lines.feed("  indented") is None
    assert lines.feed('last line"""') == "first line\n  indented\nlast line"
    assert not lines.in_block


def test_triple_quote_block_with_text_on_the_opening_and_a_bare_closing_line():
    lines = slash.LineAssembler()
    assert lines.feed('"""Dear model,') is None
    assert lines.feed("/not a command") is None
    assert lines.feed('"""') == "Dear model,\n/not a command"


def test_triple_quotes_on_one_line_and_cancel():
    lines = slash.LineAssembler()
    assert lines.feed('"""just this"""') == "just this"
    lines.feed('"""')
    lines.feed("abandoned")
    lines.cancel()
    assert not lines.in_block and lines.feed("next") == "next"


# ---- raw completion mode (models without a chat template) -----------------------------------------


def test_raw_document_continues_the_text():
    state = make_state(system="A story.")
    state.messages = [{"role": "user", "content": "Once upon a time"},
                      {"role": "assistant", "content": " there was a fox."},
                      {"role": "user", "content": "The fox"}]
    assert raw_document(state) == "A story.\n\nOnce upon a time there was a fox.\nThe fox"
    state.system = None
    state.messages = [{"role": "user", "content": "The capital of France is"}]
    assert raw_document(state) == "The capital of France is"
