"""`rocmforge generate`: answer one prompt, streaming text to stdout (stats on stderr with --verbose)."""

from __future__ import annotations

import asyncio
import json
import sys

from rocmforge_core.errors import BadInputError


def read_prompt(prompt: str | None, stdin=None) -> str:
    """The prompt per ollama's rule: piped stdin first, then a blank line, then --prompt."""
    stdin = sys.stdin if stdin is None else stdin
    piped = None
    if stdin is not None and not stdin.isatty():
        piped = stdin.read()
    if piped and piped.strip() and prompt:
        return f"{piped.rstrip()}\n\n{prompt}"
    if piped and piped.strip():
        return piped.rstrip("\n")
    if prompt is None or not prompt.strip():
        raise BadInputError("the prompt is empty", hint="pass --prompt TEXT or pipe text on stdin")
    return prompt


def model_and_prompt(model_arg, prompt_arg, model_opt, prompt, prompt_file) -> tuple[str | None, str | None]:
    """MODEL and the prompt text from `generate [MODEL] [PROMPT]`, -m, -p and -f.

    With -m, a lone argument is the prompt. The prompt comes one way only: argument, -p or -f.
    """
    from rocmforge_cli.common import pick_model, read_text_file

    if model_opt is not None:
        if prompt_arg is not None:
            raise BadInputError(f"unexpected argument '{prompt_arg}'",
                                hint="with -m MODEL, give at most one argument: the prompt")
        model_arg, prompt_arg = None, model_arg
    given = [name for name, value in (("PROMPT", prompt_arg), ("-p", prompt), ("-f", prompt_file))
             if value is not None]
    if len(given) > 1:
        raise BadInputError(f"the prompt is given twice ({' and '.join(given)})", hint="give it one way")
    if prompt_file is not None:
        prompt = read_text_file(prompt_file, "prompt file")
    return pick_model(model_arg, model_opt), prompt_arg if prompt_arg is not None else prompt


def build_request(engine, text: str, *, system: str | None, raw: bool, max_tokens: int, sampling, stop):
    """A chat request when the model has a template (and --raw is off), else a raw-text request."""
    from rocmforge_core.engine import Request

    if raw or engine.chat_template is None:
        if system:
            raise BadInputError("--system needs a chat template",
                                hint="drop --raw, or use --chat-template-file")
        return Request(prompt=text, max_tokens=max_tokens, sampling=sampling, stop=tuple(stop))
    messages = ([{"role": "system", "content": system}] if system else [])
    messages.append({"role": "user", "content": text})
    return Request(messages=messages, max_tokens=max_tokens, sampling=sampling, stop=tuple(stop))


def run(*, model, prompt, system, max_tokens, sampling, raw, stop, json_out, ctx, chat_template_file,
        backend, verbose, numerics=None, system_file=None, n_gpu_layers=None,
        server=None, cache_type=None) -> None:
    from rocmforge_cli.common import check_generation_flags, system_prompt

    params = check_generation_flags(sampling, max_tokens, ctx)  # bad flags fail before the model loads
    system = system_prompt(system, system_file)
    text = read_prompt(prompt)
    if server:
        from rocmforge_cli import remote

        return remote.generate(url=server, model=model, text=text, system=system, raw=raw,
                               max_tokens=max_tokens, sampling=sampling, stop=stop, json_out=json_out,
                               verbose=verbose)

    from rocmforge_cli.common import describe_run, resolve_model_path
    from rocmforge_cli.render import load_spinner
    from rocmforge_core.engine import create_engine

    path = resolve_model_path(model)
    with load_spinner(f"loading {path.name}"):  # on stderr, and only when stderr is a terminal
        engine = create_engine(path, backend=backend, n_ctx=ctx, n_slots=1,
                               chat_template_file=chat_template_file, numerics=numerics, cache_type=cache_type)
    if verbose:
        print(describe_run(engine, n_gpu_layers), file=sys.stderr)
    result = asyncio.run(_generate(engine, text, system=system, raw=raw, max_tokens=max_tokens,
                                   sampling=params, stop=stop, stream_out=not json_out))
    final, out_text, ids, prompt_tokens = result
    if final.finish_reason == "error":
        from rocmforge_core.errors import RocmforgeError

        raise RocmforgeError(f"generation failed: {final.error}")
    t = final.timings
    if json_out:
        print(json.dumps({
            "text": out_text, "tokens": ids, "prompt_tokens": len(prompt_tokens),
            "completion_tokens": t.completion_tokens, "finish_reason": final.finish_reason,
            "timings": {"load_ms": round(engine.load_ms, 3), "ttft_ms": round(t.ttft_ms, 3),
                        "prompt_tokens_per_s": round(t.prompt_tokens_per_s, 3),
                        "gen_tokens_per_s": round(t.gen_tokens_per_s, 3)},
        }, ensure_ascii=False))
    if verbose:
        print(f"\nprompt: {t.prompt_tokens} tokens, {t.prompt_tokens_per_s:.1f} tok/s | "
              f"generated: {t.completion_tokens} tokens, {t.gen_tokens_per_s:.1f} tok/s | "
              f"ttft {t.ttft_ms:.0f} ms | finish: {final.finish_reason}", file=sys.stderr)


async def _generate(engine, text, *, system, raw, max_tokens, sampling, stop, stream_out):
    async with engine:
        request = build_request(engine, text, system=system, raw=raw, max_tokens=max_tokens,
                                sampling=sampling, stop=stop)
        stream = engine.submit(request)
        parts, ids, final = [], [], None
        async with stream:
            async for event in stream:
                if event.text:
                    parts.append(event.text)
                    if stream_out:
                        sys.stdout.write(event.text)
                        sys.stdout.flush()
                if event.token_id is not None:
                    ids.append(event.token_id)
                if event.finish_reason is not None:
                    final = event
        if stream_out and parts and not parts[-1].endswith("\n"):
            sys.stdout.write("\n")
        return final, "".join(parts), ids, stream.prompt_tokens
