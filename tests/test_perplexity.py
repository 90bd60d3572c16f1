"""`rocmforge perplexity` on a tiny byte-level model: the NLL it reports against numpy computations of
log-softmax over the model's own logits and over the independent float64 reference; windows; bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_run import assert_one_line_error, run_main
from reference_numpy import ReferenceModel
from rocmforge_core.perplexity import windows
from tiny_byte_model import BOS, write_byte_model

TEXT = ("The river runs past the old mill and under three stone bridges before it reaches the sea; "
        "the town grew up on both banks of it.")  # 127 bytes: 128 tokens with BOS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppl")
    model = write_byte_model(root / "tiny.gguf", context_length=64)
    text = root / "text.txt"
    text.write_text(TEXT + "\n")
    return model, text


def expected_windows(ctx: int) -> list[list[int]]:
    """By hand: BOS + the bytes, cut every ctx tokens, each window's first token set to BOS."""
    ids = [BOS] + list(TEXT.encode())
    return [[BOS] + ids[lo + 1:lo + ctx] for lo in range(0, len(ids) - ctx + 1, ctx)]


def second_half_nll(logits: np.ndarray, window: list[int]) -> list[float]:
    """-log softmax(logits[i])[window[i+1]] for i = ctx/2 .. ctx-2, in float64 by a plain loop."""
    out = []
    for i in range(len(window) // 2, len(window) - 1):
        row = np.asarray(logits[i], dtype=np.float64)
        probs = np.exp(row - row.max())
        out.append(-np.log(probs[window[i + 1]] / probs.sum()))
    return out


def ppl_json(model, text, *extra: str) -> dict:
    result = run_main("perplexity", str(model), "-f", str(text), "--backend", "cpu", "--json", *extra)
    assert result.code == 0, result.stderr
    assert result.stderr == ""  # --json: stdout holds the JSON only, nothing on stderr
    return json.loads(result.stdout)


def test_windows_follow_llama_perplexity():
    got = windows(list(range(10)), 4, bos_id=99)
    assert got == [[99, 1, 2, 3], [99, 5, 6, 7]]  # tail of 2 dropped; each window's first token is BOS
    assert windows(list(range(8)), 4, bos_id=None) == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize("ctx", [32, 40])
def test_nll_equals_log_softmax_of_the_models_logits(tiny, ctx):
    from rocmforge_core.engine import create_engine

    model_path, text = tiny
    out = ppl_json(model_path, text, "-c", str(ctx))
    model = create_engine(model_path, backend="cpu", n_ctx=ctx, n_slots=1).model
    nll = []
    for window in expected_windows(ctx):
        logits = model.prefill(window, model.make_cache(1, ctx), 0, 0, all_logits=True)
        nll += second_half_nll(logits, window)
    assert out["n_windows"] == len(expected_windows(ctx)) == 128 // ctx
    assert out["n_tokens"] == len(nll) == out["n_windows"] * (ctx - 1 - ctx // 2)
    assert out["nll"] == pytest.approx(np.mean(nll), rel=1e-9)
    assert out["ppl"] == pytest.approx(np.exp(np.mean(nll)), rel=1e-9)
    err = np.exp(np.mean(nll)) * np.std(nll) / np.sqrt(len(nll) - 1)  # llama-perplexity's +/-
    assert out["ppl_err"] == pytest.approx(err, rel=1e-6)
    assert (out["ctx"], out["backend"]) == (ctx, "cpu")
    assert set(out) == {"ppl", "ppl_err", "nll", "n_tokens", "n_windows", "ctx", "backend", "numerics"}
    assert out["numerics"] == model.ops.numerics == "packed"  # the CPU's default


def test_nll_matches_the_independent_reference_model(tiny):
    model_path, text = tiny
    out = ppl_json(model_path, text, "-c", "32")
    reference = ReferenceModel(model_path)
    nll = [x for w in expected_windows(32) for x in second_half_nll(reference.logits(w), w)]
    assert out["nll"] == pytest.approx(np.mean(nll), rel=1e-4)


def test_text_output_running_values_on_stderr_final_on_stdout(tiny):
    model_path, text = tiny
    result = run_main("perplexity", "-m", str(model_path), "-f", str(text), "--ctx-size", "32")
    assert result.code == 0, result.stderr
    assert result.stderr.splitlines()[0].startswith("[1] ")
    assert [line.split()[0] for line in result.stderr.splitlines()] == ["[1]", "[2]", "[3]", "[4]"]
    final = json.loads(run_main("perplexity", str(model_path), "-f", str(text), "-c", "32",
                                "--json").stdout)
    assert result.stdout.startswith(f"PPL = {final['ppl']:.4f} +/- {final['ppl_err']:.5f} (4 windows of 32")
    assert result.stderr.splitlines()[-1] == f"[4] {final['ppl']:.4f}"


def test_missing_file_is_one_line(tiny, tmp_path):
    model_path, _ = tiny
    result = run_main("perplexity", str(model_path), "-f", str(tmp_path / "nope.txt"))
    assert_one_line_error(result, "cannot read text file")
    assert result.stdout == ""


def test_text_shorter_than_one_window_is_one_line(tiny, tmp_path):
    model_path, _ = tiny
    short = tmp_path / "short.txt"
    short.write_text("only a few words")
    assert_one_line_error(run_main("perplexity", str(model_path), "-f", str(short), "-c", "32"),
                          "shorter than one window of 32")


@pytest.mark.parametrize("args, needle", [
    (["-c", "128"], "beyond the 64"),          # the model was trained on 64 positions
    (["-c", "2"], "at least 4"),
    (["-c", "abc"], "--ctx-size"),             # a usage error: still one line, exit 2
])
def test_bad_window_sizes(tiny, args, needle):
    model_path, text = tiny
    assert_one_line_error(run_main("perplexity", str(model_path), "-f", str(text), *args), needle)


def test_empty_file_is_bad_input(tiny, tmp_path):
    model_path, _ = tiny
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert_one_line_error(run_main("perplexity", str(model_path), "-f", str(empty)), "empty")
