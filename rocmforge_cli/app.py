"""The `rocmforge` command line: one Typer app whose commands live in their own modules.

Each command parses its flags here and hands them to `<name>_cmd.run(...)`; heavy imports (numpy, the
model code) happen inside those modules so that `rocmforge --help` stays instant.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from typing import List, Optional

import typer

app = typer.Typer(
    name="rocmforge",
    help="Run GGUF language models locally on AMD (HIP), NVIDIA (CUDA) or the CPU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Backend(str, Enum):
    auto = "auto"
    cpu = "cpu"
    hip = "hip"
    cuda = "cuda"


class Numerics(str, Enum):
    packed = "packed"
    float32 = "float32"
    llama_cpp = "llama.cpp"


MODEL_HELP = ("A .gguf path, a known name (smollm2, gemma3-270m), hf://owner/repo/file.gguf or owner/repo:QUANT, "
              "an ollama model (llama3.2, qwen2.5:7b), or a .gguf name from `rocmforge models`. Default: smollm2.")
ModelArg = typer.Argument(None, metavar="MODEL", help=MODEL_HELP, show_default=False)
RequiredModelArg = typer.Argument(..., metavar="MODEL", help=MODEL_HELP, show_default=False)
BackendOpt = typer.Option(Backend.auto, "--backend", help="Where the model runs.", case_sensitive=False)
NumericsOpt = typer.Option(
    None, "--numerics", case_sensitive=False, show_default=False,
    help="CPU arithmetic: packed (default: weights stay in the file's blocks, 8-bit activations when "
         "decoding), float32 (the reference: float32 copies of the weights), or llama.cpp to reproduce "
         "llama.cpp's CPU results bit for bit (slow).")
VerboseOpt = typer.Option(False, "--verbose", "-v", help="Stats on stderr; tracebacks on errors.")
# Spellings people bring from llama.cpp: aliases of ours, with the same meaning where it applies.
ModelOpt = typer.Option(None, "--model", "-m", help="MODEL given as an option instead of the argument.",
                        show_default=False)
CTX_HELP = ("Context size in tokens. Default: the model's trained length, capped by the memory free "
            "for the KV cache and by 4096 (--verbose says which). Beyond the trained length is an error "
            "unless the model declares rope scaling.")
CtxOpt = typer.Option(None, "--ctx", "--ctx-size", "-c", help=CTX_HELP, show_default=False)
ThreadsOpt = typer.Option(None, "--threads", "-t", show_default=False,
                          help="CPU backend: threads of the packed kernels and of numpy's BLAS "
                               "(default: the physical cores for the kernels, BLAS's own choice for BLAS).")
CacheTypeOpt = typer.Option(None, "--cache-type", "-ctk", show_default=False,
                            help="KV cache element type: f16 (GPU default) or f32 (the CPU's only one).")
NglOpt = typer.Option(None, "--n-gpu-layers", "-ngl", show_default=False,
                      help="All or nothing: 0 runs on the CPU, any other number runs every layer on the "
                           "GPU (no partial offload). Same as --backend cpu / a GPU backend.")
SystemFileOpt = typer.Option(None, "--system-prompt-file", "-sys", show_default=False,
                             help="Read the system prompt from this file (instead of --system TEXT).")


def _version(value: bool) -> None:
    if value:
        from rocmforge_core import __version__

        typer.echo(f"rocmforge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Run GGUF language models locally on AMD (HIP), NVIDIA (CUDA) or the CPU."""


class Sampling:
    """The SAMPLING flags of SPEC.md, shared by chat, generate and serve (llama.cpp defaults)."""

    temperature = typer.Option(0.8, "--temperature", "--temp", help="0 means greedy.")
    top_k = typer.Option(40, "--top-k", help="Keep the k most likely tokens (0 = off).")
    top_p = typer.Option(0.95, "--top-p", help="Nucleus sampling, in (0, 1].")
    min_p = typer.Option(0.05, "--min-p", help="Drop tokens below min-p x the top probability.")
    repeat_penalty = typer.Option(1.0, "--repeat-penalty", help="1.0 = off.")
    repeat_last_n = typer.Option(64, "--repeat-last-n", help="Tokens the penalty looks back over.")
    seed = typer.Option(None, "--seed", help="Random seed (random unless given).")


def _sampling(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed) -> dict:
    return dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, seed=seed)


@app.command()
def models(json_out: bool = typer.Option(False, "--json", help="One JSON list.")) -> None:
    """List the models found: known names, rocmforge's cache, the HF cache, ollama's store, LM Studio."""
    from rocmforge_cli import models_cmd

    models_cmd.run(json_out=json_out)


RefArg = typer.Argument(..., metavar="REF", show_default=False,
                        help="A known name, hf://owner/repo/file.gguf or owner/repo:QUANT.")


@app.command()
def pull(ref: str = RefArg) -> None:
    """Download a model now (known names, Hugging Face references); ollama's models need no pull."""
    from rocmforge_cli import pull_cmd

    pull_cmd.pull(ref)


@app.command()
def rm(ref: str = RefArg) -> None:
    """Delete a model that rocmforge's cache or the Hugging Face cache holds (never ollama's or LM Studio's)."""
    from rocmforge_cli import pull_cmd

    pull_cmd.rm(ref)


@app.command()
def inspect(
    model: str = RequiredModelArg,
    json_out: bool = typer.Option(False, "--json", help="One JSON object."),
) -> None:
    """Show a model's architecture, parameters, context, tensor types and chat template."""
    from rocmforge_cli import inspect_cmd

    inspect_cmd.run(model=model, json_out=json_out)


@app.command()
def tokenize(
    model: str = RequiredModelArg,
    text: str = typer.Option(..., "--text", "-t", help="The text to tokenize."),
    no_bos: bool = typer.Option(False, "--no-bos", help="Do not add the BOS token."),
    special: bool = typer.Option(False, "--special", help="Parse special-token text like <|im_start|>."),
    json_out: bool = typer.Option(False, "--json", help="One JSON list of ids."),
) -> None:
    """Print the token ids of TEXT, as llama.cpp's tokenizer gives them."""
    from rocmforge_cli import tokenize_cmd

    tokenize_cmd.run(model=model, text=text, no_bos=no_bos, special=special, json_out=json_out)


@app.command()
def generate(
    model: Optional[str] = ModelArg,
    prompt_arg: Optional[str] = typer.Argument(None, metavar="PROMPT", show_default=False,
                                               help="Prompt text (same as -p)."),
    model_opt: Optional[str] = ModelOpt,
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Prompt text (stdin is read too when piped)."),
    prompt_file: Optional[str] = typer.Option(None, "--file", "-f", show_default=False,
                                              help="Read the prompt from this file."),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt for the chat template."),
    system_file: Optional[str] = SystemFileOpt,
    max_tokens: int = typer.Option(512, "--max-tokens", "-n", help="Most tokens to generate."),
    temperature: float = Sampling.temperature,
    top_k: int = Sampling.top_k,
    top_p: float = Sampling.top_p,
    min_p: float = Sampling.min_p,
    repeat_penalty: float = Sampling.repeat_penalty,
    repeat_last_n: int = Sampling.repeat_last_n,
    seed: Optional[int] = Sampling.seed,
    raw: bool = typer.Option(False, "--raw", help="Do not apply the chat template."),
    stop: List[str] = typer.Option([], "--stop", help="Stop when this text appears (repeatable)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object with text, ids and timings."),
    ctx: Optional[int] = CtxOpt,
    chat_template_file: Optional[str] = typer.Option(None, "--chat-template-file", help="Jinja template to use instead of the model's."),
    backend: Backend = BackendOpt,
    cache_type: Optional[str] = CacheTypeOpt,
    n_gpu_layers: Optional[int] = NglOpt,
    threads: Optional[int] = ThreadsOpt,
    numerics: Numerics = NumericsOpt,
    verbose: bool = VerboseOpt,
    server: Optional[str] = typer.Option(None, "--server", help="Ask an OpenAI-compatible server at this URL instead of loading the model."),
) -> None:
    """Answer one prompt and exit. Streams the text to stdout."""
    from rocmforge_cli import generate_cmd
    from rocmforge_cli.common import run_flags

    backend_name = run_flags(threads, n_gpu_layers, backend.value)  # first: BLAS reads -t as it loads
    model, text = generate_cmd.model_and_prompt(model, prompt_arg, model_opt, prompt, prompt_file)
    generate_cmd.run(server=server,
        model=model, prompt=text, system=system, system_file=system_file, max_tokens=max_tokens,
        sampling=_sampling(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed),
        raw=raw, stop=stop, json_out=json_out, ctx=ctx, chat_template_file=chat_template_file,
        backend=backend_name, numerics=_value(numerics), verbose=verbose, n_gpu_layers=n_gpu_layers,
        cache_type=cache_type,
    )


@app.command()
def chat(
    model: Optional[str] = ModelArg,
    model_opt: Optional[str] = ModelOpt,
    system: Optional[str] = typer.Option(None, "--system", help="System prompt."),
    system_file: Optional[str] = SystemFileOpt,
    max_tokens: int = typer.Option(1024, "--max-tokens", "-n", help="Most tokens per reply."),
    temperature: float = Sampling.temperature,
    top_k: int = Sampling.top_k,
    top_p: float = Sampling.top_p,
    min_p: float = Sampling.min_p,
    repeat_penalty: float = Sampling.repeat_penalty,
    repeat_last_n: int = Sampling.repeat_last_n,
    seed: Optional[int] = Sampling.seed,
    ctx: Optional[int] = CtxOpt,
    context_shift: bool = typer.Option(False, "--context-shift", help="When the context is full, drop the oldest turns (the system prompt stays)."),
    chat_template_file: Optional[str] = typer.Option(None, "--chat-template-file", help="Jinja template to use instead of the model's."),
    history_file: Optional[str] = typer.Option(None, "--history-file", help="Input history file (default: in the rocmforge data dir)."),
    backend: Backend = BackendOpt,
    n_gpu_layers: Optional[int] = NglOpt,
    threads: Optional[int] = ThreadsOpt,
    plain: bool = typer.Option(False, "--plain", help="Leave replies as the model wrote them: no Markdown rendering (/set markdown turns it on)."),
    verbose: bool = VerboseOpt,
    server: Optional[str] = typer.Option(None, "--server", help="Chat with an OpenAI-compatible server at this URL instead of loading the model (MODEL, if given, is the name sent)."),
) -> None:
    """Chat with a model in the terminal (piped stdin: answer once and exit)."""
    from rocmforge_cli import chat_cmd
    from rocmforge_cli.common import pick_model, run_flags

    backend_name = run_flags(threads, n_gpu_layers, backend.value)  # first: BLAS reads -t as it loads
    chat_cmd.run(
        model=pick_model(model, model_opt), system=system, system_file=system_file, max_tokens=max_tokens,
        sampling=_sampling(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed),
        ctx=ctx, context_shift=context_shift, chat_template_file=chat_template_file,
        history_file=history_file, backend=backend_name, verbose=verbose, n_gpu_layers=n_gpu_layers,
        server=server,
        plain=plain,
    )


@app.command()
def serve(
    model: Optional[str] = ModelArg,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8080, "--port", help="TCP port (0: any free port)."),
    ctx: Optional[int] = typer.Option(None, "--ctx", "-c", help="Context size per slot in tokens (default: model's, max 4096)."),
    parallel: int = typer.Option(4, "--parallel", help="KV-cache slots: sequences decoded together."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="ROCMFORGE_API_KEY", help="Require Authorization: Bearer KEY on /v1 routes."),
    max_queue: int = typer.Option(16, "--max-queue", help="Sequences that may wait for a slot; more get HTTP 503."),
    max_body_bytes: int = typer.Option(8 << 20, "--max-body-bytes", help="Largest request body; larger gets HTTP 413."),
    grace: float = typer.Option(10.0, "--shutdown-grace", help="Seconds in-flight requests get to finish on SIGINT/SIGTERM."),
    context_shift: bool = typer.Option(False, "--context-shift", help="A chat over the context drops its oldest exchanges (the system prompt stays) instead of getting HTTP 400."),
    temperature: float = Sampling.temperature,
    top_k: int = Sampling.top_k,
    top_p: float = Sampling.top_p,
    min_p: float = Sampling.min_p,
    repeat_penalty: float = Sampling.repeat_penalty,
    repeat_last_n: int = Sampling.repeat_last_n,
    seed: Optional[int] = Sampling.seed,
    chat_template_file: Optional[str] = typer.Option(None, "--chat-template-file", help="Jinja template to use instead of the model's."),
    backend: Backend = BackendOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API (SAMPLING flags set the defaults)."""
    from rocmforge_cli import serve_cmd

    serve_cmd.run(
        model=model, host=host, port=port, ctx=ctx, parallel=parallel, backend=backend.value,
        api_key=api_key, max_queue=max_queue, max_body_bytes=max_body_bytes, grace=grace,
        sampling=_sampling(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed),
        chat_template_file=chat_template_file, verbose=verbose, context_shift=context_shift,
    )


@app.command()
def bench(
    model: Optional[str] = ModelArg,
    model_opt: Optional[str] = ModelOpt,
    n_prompt: int = typer.Option(512, "--n-prompt", "-p", help="Prompt tokens processed as one batch."),
    n_gen: int = typer.Option(128, "--n-gen", "-n", help="Tokens generated one at a time."),
    repetitions: int = typer.Option(5, "--repetitions", "-r", help="Runs; the median is reported."),
    depth: int = typer.Option(0, "--n-depth", "-d", help="Tokens already in the context before tg (prefilled, not timed)."),
    backend: Backend = BackendOpt,
    cache_type: Optional[str] = CacheTypeOpt,
    n_gpu_layers: Optional[int] = NglOpt,
    threads: Optional[int] = ThreadsOpt,
    numerics: Numerics = NumericsOpt,
    temperature: float = typer.Option(0.0, "--temperature", "--temp",
                                      help="tg sampling: 0 (the default, as llama-bench) is greedy."),
    top_k: int = Sampling.top_k,
    top_p: float = Sampling.top_p,
    min_p: float = Sampling.min_p,
    repeat_penalty: float = Sampling.repeat_penalty,
    repeat_last_n: int = Sampling.repeat_last_n,
    seed: Optional[int] = Sampling.seed,
    json_out: bool = typer.Option(False, "--json", help="One JSON object."),
) -> None:
    """Measure prompt processing (pp) and generation (tg) speed in tokens/s, like llama-bench."""
    from rocmforge_cli import bench_cmd
    from rocmforge_cli.common import pick_model, run_flags

    backend_name = run_flags(threads, n_gpu_layers, backend.value)  # first: BLAS reads -t as it loads
    bench_cmd.run(model=pick_model(model, model_opt), n_prompt=n_prompt, n_gen=n_gen,
                  repetitions=repetitions, backend=backend_name, json_out=json_out, numerics=_value(numerics),
                  depth=depth, cache_type=cache_type,
                  sampling=_sampling(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed))


@app.command()
def perplexity(
    model: Optional[str] = ModelArg,
    model_opt: Optional[str] = ModelOpt,
    text_file: str = typer.Option(..., "--file", "-f", show_default=False,
                                  help="The text to score (at least one window of -c tokens)."),
    ctx: int = typer.Option(512, "--ctx-size", "--ctx", "-c",
                            help="Window size in tokens; the second half of each window is scored."),
    backend: Backend = BackendOpt,
    n_gpu_layers: Optional[int] = NglOpt,
    threads: Optional[int] = ThreadsOpt,
    json_out: bool = typer.Option(False, "--json", help="One JSON object: ppl, nll, n_tokens, n_windows, ctx, backend."),
    numerics: Numerics = NumericsOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Perplexity of a text file, like llama-perplexity: non-overlapping windows, second halves scored."""
    from rocmforge_cli import perplexity_cmd
    from rocmforge_cli.common import pick_model, run_flags

    backend_name = run_flags(threads, n_gpu_layers, backend.value)  # first: BLAS reads -t as it loads
    perplexity_cmd.run(model=pick_model(model, model_opt), text_file=text_file, ctx=ctx, backend=backend_name,
                       json_out=json_out, verbose=verbose, n_gpu_layers=n_gpu_layers, numerics=_value(numerics))


def _value(numerics: Optional[Numerics]) -> Optional[str]:
    return numerics.value if numerics is not None else None


def _verbose_requested(argv: list[str]) -> bool:
    return "--verbose" in argv or "-v" in argv or os.environ.get("ROCMFORGE_DEBUG") == "1"


def _click_module():
    """Typer >= 0.20 vendors click as typer._click; older releases use click itself."""
    try:
        from typer.core import _click
    except ImportError:
        import click as _click
    return _click


def _report(exc: BaseException, line: str, verbose: bool) -> None:
    """The error line on stderr; with --verbose the traceback first. The exit code never depends on it."""
    if verbose:
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(line, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: every failure becomes one `error: ...` line unless --verbose."""
    from rocmforge_core.errors import RocmforgeError

    click = _click_module()

    args = sys.argv[1:] if argv is None else argv
    verbose = _verbose_requested(args)
    code = 0
    try:
        result = app(args=args, prog_name="rocmforge", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except RocmforgeError as exc:
        _report(exc, f"error: {exc.one_line()}", verbose)
        code = exc.exit_code
    except click.exceptions.NoArgsIsHelpError:
        code = 0  # Typer has already printed the help
    except click.exceptions.ClickException as exc:
        command = exc.ctx.command_path if getattr(exc, "ctx", None) else "rocmforge"
        print(f"error: {exc.format_message()} (see '{command} --help')", file=sys.stderr)
        code = exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print(file=sys.stderr)
        code = 130
    except BrokenPipeError:
        sys.stderr.close()
        code = 1
    except Exception as exc:  # an internal failure: one line, the traceback only on request
        hint = "" if verbose else " (run again with --verbose for the traceback)"
        _report(exc, f"error: internal error: {type(exc).__name__}: {exc}{hint}", verbose)
        code = 1
    sys.stdout.flush()
    return code


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
