"""`rocmforge perplexity`: the perplexity of a text file, like llama-perplexity (rocmforge_core/perplexity.py).

The running value goes to stderr after each window, the final estimate to stdout (or one JSON object).
"""

from __future__ import annotations

import json
import sys

from rocmforge_core.errors import BadInputError


def run(*, model, text_file, ctx, backend, json_out, verbose, n_gpu_layers=None, numerics=None) -> None:
    from rocmforge_cli.common import read_text_file

    if ctx < 4:
        raise BadInputError(f"-c must be at least 4 for perplexity (got {ctx})")
    text = read_text_file(text_file, "text file")  # a bad file fails before the model loads
    if not text.strip():
        raise BadInputError(f"text file '{text_file}' is empty")

    from rocmforge_cli.common import describe_run, resolve_model_path
    from rocmforge_core.engine import create_engine
    from rocmforge_core.perplexity import perplexity

    engine = create_engine(resolve_model_path(model), backend=backend, n_ctx=ctx, n_slots=1, numerics=numerics)
    if verbose:
        print(describe_run(engine, n_gpu_layers), file=sys.stderr)
    tokens = engine.tokenizer.encode(text, add_bos=None, parse_special=False)
    progress = None if json_out and not verbose else _progress
    result = perplexity(engine.model, tokens, ctx, _window_bos(engine), on_window=progress)
    if json_out:
        print(json.dumps({"ppl": result.ppl, "ppl_err": result.ppl_err, "nll": result.nll,
                          "n_tokens": result.n_tokens, "n_windows": result.n_windows, "ctx": ctx,
                          "backend": engine.backend,
                          "numerics": engine.model.ops.numerics if engine.backend == "cpu" else None}))
        return
    print(f"PPL = {result.ppl:.4f} +/- {result.ppl_err:.5f} ({result.n_windows} windows of {ctx} tokens, "
          f"{result.n_tokens} scored: the second half of each)")


def _window_bos(engine) -> int | None:
    """BOS starts each window when the model's tokenizer adds one to a prompt (llama-perplexity's rule)."""
    tok = engine.tokenizer
    return tok.bos_id if tok.bos_id is not None and tok.add_bos else None


def _progress(totals) -> None:
    print(f"[{totals.n_windows}] {totals.ppl:.4f}", file=sys.stderr, flush=True)
