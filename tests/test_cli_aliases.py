"""The flags people bring from llama.cpp (-m, -c/--ctx-size, -f, -sys, -t, -ngl, --version, a positional
prompt), the context-size rules, and exit codes that do not depend on --verbose. A tiny byte-level
model keeps every run in milliseconds; -t and --version run as real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cli_run import assert_one_line_error, run_main
from tiny_byte_model import write_byte_model

TEMPLATE = "{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}"
GREEDY = ("--temperature", "0", "-n", "4", "--json")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("aliases")
    paths = {
        "model": write_byte_model(root / "tiny.gguf", context_length=64),
        "scaled": write_byte_model(root / "scaled.gguf", context_length=64, rope_scale=2.0),
        "template": root / "t.jinja", "prompt": root / "prompt.txt", "system": root / "system.txt",
    }
    paths["template"].write_text(TEMPLATE)
    paths["prompt"].write_text("count: one two\n")
    paths["system"].write_text("Be brief.\n")
    return {k: str(v) for k, v in paths.items()}


def generate(*args: str, stdin: str = "") -> dict:
    result = run_main("generate", *args, *GREEDY, "--backend", "cpu", stdin=stdin)
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def subprocess_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "ROCMFORGE_DEBUG"}
    full_env.update(env)
    return subprocess.run([sys.executable, "-m", "rocmforge_cli", *args], capture_output=True, text=True,
                          env=full_env, stdin=subprocess.DEVNULL, timeout=120)


# ---- every alias is in --help ------------------------------------------------------------------------

ALIASES = {
    "generate": ["-m", "--model", "-c", "--ctx-size", "-f", "--file", "-sys", "--system-prompt-file",
                 "-t", "--threads", "-ngl", "--n-gpu-layers", "[PROMPT]"],
    "chat": ["-m", "--model", "-c", "--ctx-size", "-sys", "--system-prompt-file", "-t", "--threads",
             "-ngl", "--n-gpu-layers"],
    "bench": ["-m", "--model", "-t", "--threads", "-ngl", "--n-gpu-layers"],
    "perplexity": ["-m", "--model", "-f", "--file", "-c", "--ctx-size", "-t", "--threads", "-ngl",
                   "--n-gpu-layers", "--json"],
}


@pytest.mark.parametrize("command", list(ALIASES))
def test_help_lists_every_alias(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    result = run_main(command, "--help")
    assert result.code == 0 and result.stderr == ""
    words = set(result.stdout.replace(",", " ").replace("│", " ").split())
    missing = [a for a in ALIASES[command] if a not in words]
    assert not missing, result.stdout
    if command != "bench":
        assert "all or nothing" in result.stdout.lower()  # what -ngl does, said in the help


def test_version_as_a_real_process():
    from rocmforge_core import __version__

    proc = subprocess_cli("--version")
    assert proc.returncode == 0 and proc.stdout == f"rocmforge {__version__}\n" and proc.stderr == ""
    assert "--version" in subprocess_cli("--help").stdout


# ---- generate: the prompt and model from any spelling -------------------------------------------------

def test_positional_prompt_file_and_model_option_are_the_same_prompt(files):
    by_flag = generate(files["model"], "-p", "count: one two")
    for args in ([files["model"], "count: one two"], ["-m", files["model"], "count: one two"],
                 ["--model", files["model"], "-p", "count: one two"], [files["model"], "-f", files["prompt"]],
                 ["-m", files["model"], "--file", files["prompt"]]):
        out = generate(*args)
        assert (out["tokens"], out["prompt_tokens"]) == (by_flag["tokens"], by_flag["prompt_tokens"]), args
    assert by_flag["prompt_tokens"] == len("count: one two") + 1  # BOS + bytes: -f dropped the newline


def test_piped_stdin_comes_before_a_positional_prompt(files):
    out = generate(files["model"], "two", stdin="one")
    assert out["prompt_tokens"] == len("one\n\ntwo") + 1


@pytest.mark.parametrize("args, needle", [
    (["{model}", "hi", "-p", "hi"], "given twice"),
    (["{model}", "-p", "hi", "-f", "{prompt}"], "given twice"),
    (["-m", "{model}", "{model}", "hi"], "unexpected argument"),
    (["{model}", "-f", "/nonexistent/prompt.txt"], "cannot read prompt file"),
])
def test_prompt_given_wrongly_is_one_line(files, args, needle):
    args = [a.format(**files) for a in args]
    assert_one_line_error(run_main("generate", *args), needle)


def test_two_models_is_bad_input(files):
    assert_one_line_error(run_main("chat", files["model"], "-m", files["scaled"], stdin="hi"), "two models")


def test_system_prompt_file_equals_system_text(files):
    common = (files["model"], "-p", "hi", "--chat-template-file", files["template"])
    by_text = generate(*common, "--system", "Be brief.")
    for flag in ("-sys", "--system-prompt-file"):
        out = generate(*common, flag, files["system"])
        assert (out["tokens"], out["prompt_tokens"]) == (by_text["tokens"], by_text["prompt_tokens"])
    assert by_text["prompt_tokens"] == len("[system:Be brief.][user:hi]") + 1


def test_system_prompt_file_problems(files):
    base = ("generate", files["model"], "-p", "hi", "--chat-template-file", files["template"])
    assert_one_line_error(run_main(*base, "-sys", "/nonexistent/s.txt"), "cannot read system prompt file")
    assert_one_line_error(run_main(*base, "-sys", files["system"], "--system", "x"), "both --system")


def test_chat_takes_the_model_option_and_ctx_size(files):
    by_arg = run_main("chat", files["model"], "--temperature", "0", "-n", "3", "-c", "32", stdin="hello")
    by_opt = run_main("chat", "-m", files["model"], "--temperature", "0", "-n", "3", "--ctx-size", "32",
                      stdin="hello")
    assert by_arg.code == by_opt.code == 0, by_arg.stderr + by_opt.stderr
    assert by_arg.stdout == by_opt.stdout


# ---- -c / --ctx-size / --ctx --------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["-c", "--ctx-size", "--ctx"])
def test_ctx_aliases_reach_the_engine(files, flag):
    ok = run_main("generate", files["model"], "-p", "hi", "-n", "1", flag, "16", "-v")
    assert ok.code == 0, ok.stderr
    assert "ctx 16 (as requested with --ctx)" in ok.stderr
    too_long = run_main("generate", files["model"], "-p", "x" * 20, flag, "16")
    assert_one_line_error(too_long, "context holds 16")


def test_default_ctx_and_its_reason_are_said(files):
    result = run_main("generate", files["model"], "-p", "hi", "-n", "1", "--verbose")
    assert result.code == 0 and "ctx 64 (the model's trained length)" in result.stderr


def test_ctx_beyond_the_trained_length_is_refused_not_clamped(files):
    line = assert_one_line_error(run_main("generate", files["model"], "-p", "hi", "-c", "65"), "beyond the 64")
    assert "rope scaling" in line


def test_rope_scaling_allows_a_longer_ctx(files):
    ok = run_main("generate", files["scaled"], "-p", "hi", "-n", "1", "-c", "128", "-v")
    assert ok.code == 0 and "ctx 128 (as requested" in ok.stderr, ok.stderr
    assert_one_line_error(run_main("generate", files["scaled"], "-p", "hi", "-c", "129"), "beyond the 128")


# ---- -ngl: all or nothing, never -n gl ----------------------------------------------------------------

@pytest.fixture
def no_gpu(monkeypatch):
    import rocmforge_core.backends as backends

    monkeypatch.setattr(backends, "gpu_runtime_problem", lambda name: f"no {name} here (test)")


@pytest.mark.parametrize("spelling", [["-ngl", "99"], ["-ngl=99"], ["--n-gpu-layers", "99"]])
def test_ngl_asks_for_the_gpu_and_is_never_dash_n(files, no_gpu, spelling):
    line = assert_one_line_error(run_main("generate", files["model"], "-p", "hi", *spelling), "-ngl 99")
    assert "asks for a GPU" in line and "max-tokens" not in line


def test_ngl_zero_is_the_cpu(files, no_gpu):
    result = run_main("generate", files["model"], "-p", "hi", "-n", "2", "-ngl", "0", "-v", "--json")
    assert result.code == 0, result.stderr
    assert result.stderr.startswith("backend: cpu (requested)")
    assert json.loads(result.stdout)["completion_tokens"] == 2  # -n still means --max-tokens


@pytest.mark.parametrize("args, needle", [
    (["-ngl", "0", "--backend", "cuda"], "contradicts --backend cuda"),
    (["-ngl", "5", "--backend", "cpu"], "contradicts --backend cpu"),
    (["-ngl", "-1"], "must be 0"),
])
def test_ngl_conflicts(files, args, needle):
    assert_one_line_error(run_main("generate", files["model"], "-p", "hi", *args), needle)


def test_bench_takes_model_option_and_ngl_zero(files):
    result = run_main("bench", "-m", files["model"], "-p", "8", "-n", "4", "-r", "1", "-ngl", "0", "--json")
    assert result.code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["backend"] == "cpu" and out["pp"]["n_tokens"] == 8 and out["model"] == files["model"]


def test_bench_depth_fills_the_context_before_tg(files):
    """-d like llama-bench: tg decodes after d tokens are in the context (the engine's prompt counts them)."""
    result = run_main("bench", files["model"], "-p", "0", "-n", "3", "-d", "20", "-r", "1", "--json")
    assert result.code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["tg"]["depth"] == 20 and out["tg"]["tokens_per_s"] > 0
    assert_one_line_error(run_main("bench", files["model"], "-d", "-1"), "-d must be >= 0")


def test_bench_can_sample_its_tg(files):
    """tg is greedy by default (as llama-bench); --temp and the other sampling flags time the sampled
    path instead, and the report says which; a bad flag is one line before any load."""
    result = run_main("bench", files["model"], "-p", "0", "-n", "3", "-r", "1", "--json")
    assert json.loads(result.stdout)["tg"]["sampling"] == "greedy"
    result = run_main("bench", files["model"], "-p", "0", "-n", "3", "-r", "1", "--temp", "0.7", "--top-k", "5",
                      "--repeat-penalty", "1.2", "--seed", "3", "--json")
    assert result.code == 0, result.stderr
    tg = json.loads(result.stdout)["tg"]
    assert tg["tokens_per_s"] > 0 and tg["sampling"]["temperature"] == 0.7 and tg["sampling"]["top_k"] == 5
    assert tg["sampling"]["repeat_penalty"] == 1.2
    assert_one_line_error(run_main("bench", files["model"], "--top-p", "0"), "--top-p must be in (0, 1]")


def test_cache_type_f16_is_for_the_gpu(files):
    assert_one_line_error(run_main("generate", files["model"], "-p", "hi", "--cache-type", "f16", "--backend", "cpu"),
                          "float32")
    assert_one_line_error(run_main("bench", files["model"], "--cache-type", "q4"), "unknown cache type")
    result = run_main("bench", files["model"], "-p", "0", "-n", "2", "-r", "1", "--cache-type", "f32", "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["cache_type"] == "f32"


# ---- -t: BLAS threads, set before numpy loads (a real process) ----------------------------------------

def test_threads_set_the_blas_thread_count(files):
    proc = subprocess_cli("generate", files["model"], "-p", "hi", "-n", "1", "-t", "1", "-v",
                          OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2")
    assert proc.returncode == 0, proc.stderr
    assert "cpu threads 1 (BLAS)" in proc.stderr  # read back from the BLAS, not echoed


def test_threads_read_back_from_the_library():
    code = ("from rocmforge_core.threads import set_cpu_threads, blas_threads\n"
            "set_cpu_threads(1)\nimport numpy\nprint(blas_threads())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() in ("1", "None"), proc.stderr


@pytest.mark.parametrize("flag", ["-t", "--threads"])
def test_zero_threads_is_bad_input(files, flag):
    assert_one_line_error(run_main("generate", files["model"], "-p", "hi", flag, "0"), "at least 1")


# ---- exit codes do not depend on verbosity ------------------------------------------------------------

VERBOSITY = [([], {}), (["-v"], {}), (["--verbose"], {}), ([], {"ROCMFORGE_DEBUG": "1"})]


def check_code(result, code: int, verbose: bool) -> None:
    assert result.code == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ")
    if verbose:
        assert lines[0].startswith("Traceback")
    else:
        assert len(lines) == 1 and "Traceback" not in result.stderr


def set_debug_env(monkeypatch, env: dict) -> None:
    monkeypatch.delenv("ROCMFORGE_DEBUG", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


@pytest.mark.parametrize("flags, env", VERBOSITY)
def test_bad_input_is_exit_2_at_any_verbosity(files, monkeypatch, flags, env):
    set_debug_env(monkeypatch, env)
    verbose = bool(flags or env)
    check_code(run_main("generate", "/nonexistent/model.gguf", "-p", "hi", *flags), 2, verbose)
    check_code(run_main("generate", files["model"], "-p", "hi", "-c", "65", *flags), 2, verbose)
    check_code(run_main("perplexity", files["model"], "-f", "/nonexistent.txt", *flags), 2, verbose)


@pytest.mark.parametrize("flags, env", VERBOSITY)
def test_internal_failure_is_exit_1_at_any_verbosity(files, monkeypatch, flags, env):
    from rocmforge_cli import generate_cmd

    set_debug_env(monkeypatch, env)

    def broken(**kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(generate_cmd, "run", broken)
    result = run_main("generate", files["model"], "-p", "hi", *flags)
    check_code(result, 1, bool(flags or env))
    assert "RuntimeError: boom" in result.stderr.splitlines()[-1]


def test_verbose_traceback_in_a_real_process(tmp_path):
    quiet = subprocess_cli("generate", str(tmp_path / "missing.gguf"), "-p", "hi")
    loud = subprocess_cli("generate", str(tmp_path / "missing.gguf"), "-p", "hi", "-v")
    debug = subprocess_cli("generate", str(tmp_path / "missing.gguf"), "-p", "hi", ROCMFORGE_DEBUG="1")
    assert quiet.returncode == loud.returncode == debug.returncode == 2
    assert "Traceback" not in quiet.stderr and "Traceback" in loud.stderr and "Traceback" in debug.stderr
    assert quiet.stderr.splitlines()[-1] == loud.stderr.splitlines()[-1] == debug.stderr.splitlines()[-1]
    assert quiet.stdout == loud.stdout == ""


def test_banner_says_why_the_context_is_what_it_is():
    import io

    from rocmforge_cli.render import Renderer

    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    Renderer(out=out, interactive=True).banner(name="m.gguf", backend="cpu", backend_reason="requested",
                                               n_ctx=4096, load_ms=10, ctx_reason="the default cap of 4096")
    assert "ctx 4096: the default cap of 4096" in out.getvalue()
