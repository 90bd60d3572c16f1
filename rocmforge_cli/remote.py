"""`--server URL`: run `generate` against an OpenAI-compatible server (rocmforge serve, llama.cpp's
llama-server, ollama, vLLM...) instead of a local engine, streaming over server-sent events."""

from __future__ import annotations

import json
import os
import sys
import time

from rocmforge_core.errors import BadInputError, RocmforgeError


def _httpx():
    try:
        import httpx
    except ImportError:
        raise RocmforgeError("--server needs httpx", hint="pip install \"rocmforge[client]\"") from None
    return httpx


def request_body(*, model, text, system, raw, max_tokens, sampling: dict, stop) -> tuple[str, dict]:
    """(path, JSON body): chat unless --raw; llama.cpp's extra sampling fields pass through."""
    body = {"max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True},
            "temperature": sampling["temperature"], "top_p": sampling["top_p"], "top_k": sampling["top_k"],
            "min_p": sampling["min_p"], "repeat_penalty": sampling["repeat_penalty"],
            "repeat_last_n": sampling["repeat_last_n"]}
    if sampling.get("seed") is not None:
        body["seed"] = sampling["seed"]
    if stop:
        body["stop"] = list(stop)
    if model:
        body["model"] = model
    if raw:
        if system:
            raise BadInputError("--system needs a chat template", hint="drop --raw")
        return "/v1/completions", {**body, "prompt": text}
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return "/v1/chat/completions", {**body, "messages": messages}


def _headers() -> dict:
    key = os.environ.get("ROCMFORGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def _fail(response) -> RocmforgeError:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text.strip()[:200] or response.reason_phrase
    cls = BadInputError if 400 <= response.status_code < 500 else RocmforgeError
    return cls(f"the server answered {response.status_code}: {message}")


def stream_text(url: str, path: str, body: dict, on_text) -> dict:
    """POST and stream; calls on_text(delta) per piece. -> {"finish_reason", "usage", "ttft_ms", "total_ms"}"""
    httpx = _httpx()
    out = {"finish_reason": None, "usage": None, "ttft_ms": 0.0}
    start = time.perf_counter()
    try:
        with httpx.stream("POST", url.rstrip("/") + path, json=body, headers=_headers(),
                          timeout=httpx.Timeout(30.0, read=None)) as response:
            if response.status_code != 200:
                response.read()
                raise _fail(response)
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                _take(json.loads(line[6:]), out, on_text, start)
    except httpx.TransportError as exc:
        raise RocmforgeError(f"cannot reach the server at {url}: {exc}",
                             hint="is `rocmforge serve` running there?") from None
    out["total_ms"] = (time.perf_counter() - start) * 1e3
    return out


def _take(chunk: dict, out: dict, on_text, start: float) -> None:
    if "error" in chunk:
        raise RocmforgeError(f"the server failed: {chunk['error'].get('message')}")
    if chunk.get("usage"):
        out["usage"] = chunk["usage"]
    for choice in chunk.get("choices") or []:
        piece = choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")
        if piece:
            if not out["ttft_ms"]:
                out["ttft_ms"] = (time.perf_counter() - start) * 1e3
            on_text(piece)
        if choice.get("finish_reason"):
            out["finish_reason"] = choice["finish_reason"]


def generate(*, url, model, text, system, raw, max_tokens, sampling, stop, json_out, verbose) -> None:
    path, body = request_body(model=model, text=text, system=system, raw=raw, max_tokens=max_tokens,
                              sampling=sampling, stop=stop)
    parts: list[str] = []

    def show(piece: str) -> None:
        parts.append(piece)
        if not json_out:
            sys.stdout.write(piece)
            sys.stdout.flush()

    result = stream_text(url, path, body, show)
    if not json_out and parts and not parts[-1].endswith("\n"):
        sys.stdout.write("\n")
    usage = result["usage"] or {}
    completion = usage.get("completion_tokens", 0)
    gen_s = (result["total_ms"] - result["ttft_ms"]) / 1e3
    if json_out:  # token ids do not cross the OpenAI API: "tokens" is null
        print(json.dumps({
            "text": "".join(parts), "tokens": None, "prompt_tokens": usage.get("prompt_tokens", 0),
            "completion_tokens": completion, "finish_reason": result["finish_reason"],
            "timings": {"load_ms": 0.0, "ttft_ms": round(result["ttft_ms"], 3), "prompt_tokens_per_s": 0.0,
                        "gen_tokens_per_s": round((completion - 1) / gen_s, 3) if gen_s > 0 and completion > 1
                        else 0.0}}, ensure_ascii=False))
    if verbose:
        print(f"\nserver {url}: prompt {usage.get('prompt_tokens', '?')} tokens | generated {completion} "
              f"tokens | ttft {result['ttft_ms']:.0f} ms | finish: {result['finish_reason']}", file=sys.stderr)
