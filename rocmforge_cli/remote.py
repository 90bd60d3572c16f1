"""`--server URL`: run `generate` and `chat` against an OpenAI-compatible server (rocmforge serve,
llama.cpp's llama-server, ollama, vLLM...) instead of a local engine, streaming over server-sent events.

`generate` streams with a blocking client; `chat` uses `ChatStream`, which turns one streamed chat
completion into the engine's Event stream so the REPL shows, stops and times a remote reply exactly as
it does a local one.
"""

from __future__ import annotations

import asyncio
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


def _body(*, model, max_tokens, sampling: dict) -> dict:
    """The streamed request's common fields; llama.cpp's extra sampling fields pass through."""
    body = {"max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True},
            "temperature": sampling["temperature"], "top_p": sampling["top_p"], "top_k": sampling["top_k"],
            "min_p": sampling["min_p"], "repeat_penalty": sampling["repeat_penalty"],
            "repeat_last_n": sampling["repeat_last_n"]}
    if sampling.get("seed") is not None:
        body["seed"] = sampling["seed"]
    if model:
        body["model"] = model
    return body


def chat_body(*, model, messages: list[dict], max_tokens: int, sampling: dict) -> dict:
    return {**_body(model=model, max_tokens=max_tokens, sampling=sampling), "messages": messages}


def request_body(*, model, text, system, raw, max_tokens, sampling: dict, stop) -> tuple[str, dict]:
    """(path, JSON body): chat unless --raw."""
    body = _body(model=model, max_tokens=max_tokens, sampling=sampling)
    if stop:
        body["stop"] = list(stop)
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
        raise transport_error(url, exc) from None
    out["total_ms"] = (time.perf_counter() - start) * 1e3
    return out


def transport_error(url: str, exc) -> RocmforgeError:
    """No connection at all is bad input (exit 2: a wrong URL, or no server there); a connection that
    broke or timed out is a failure (exit 1)."""
    httpx = _httpx()
    if isinstance(exc, httpx.ConnectError):
        reason = "connection refused" if _refused(exc) else f"cannot connect: {exc}"
        return BadInputError(f"cannot reach the server at {url} ({reason})",
                             hint="is `rocmforge serve` running there?")
    if isinstance(exc, httpx.TimeoutException):
        return RocmforgeError(f"the server at {url} did not answer in time ({type(exc).__name__})")
    return RocmforgeError(f"the connection to the server at {url} failed: {exc or type(exc).__name__}")


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

    result = stream_text(check_url(url), path, body, show)
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


def _refused(exc: BaseException) -> bool:
    """Whether a connect error comes from a refused connection (the async client wraps that in a
    generic "All connection attempts failed", with the ConnectionRefusedError in its chain)."""
    for _ in range(8):
        if exc is None:
            return False
        if isinstance(exc, ConnectionRefusedError) or "refused" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


# ---- chat: the async client -------------------------------------------------------------------------


def check_url(url: str) -> str:
    """The server's base URL without a trailing slash; BadInputError for what is not http(s)."""
    if not url.startswith(("http://", "https://")):
        raise BadInputError(f"--server needs an http:// or https:// URL (got '{url}')",
                            hint="e.g. --server http://127.0.0.1:8080")
    return url.rstrip("/")


def async_client():
    httpx = _httpx()
    return httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=None))


async def server_model(client, url: str) -> dict:
    """The first model card of GET /v1/models ({} when the server lists none or has no such route).
    No server there, or a refused key, is an error now, before the user types anything."""
    httpx = _httpx()
    try:
        response = await client.get(url + "/v1/models", headers=_headers())
    except httpx.TransportError as exc:
        raise transport_error(url, exc) from None
    if response.status_code in (401, 403):
        raise _fail(response)
    try:
        cards = response.json()["data"] if response.status_code == 200 else []
    except (ValueError, KeyError, TypeError):
        cards = []
    return cards[0] if cards and isinstance(cards[0], dict) else {}


class ChatStream:
    """One streamed chat completion as an async iterator of rocmforge_core.engine.Event: a text event
    per delta, then a final event with the finish reason and timings. `cancel()` closes the connection
    (the server then cancels the request) and the final event says "cancelled". A failure (refused
    request, lost connection) is raised from the iteration as a RocmforgeError."""

    def __init__(self, client, url: str, body: dict):
        self._queue: asyncio.Queue = asyncio.Queue()
        self._done = False
        self._task = asyncio.ensure_future(self._run(client, url, body))
        self._task.add_done_callback(self._cancelled_early)

    def cancel(self) -> None:
        if not self._task.done():
            self._task.cancel()

    def __aiter__(self) -> "ChatStream":
        return self

    async def __anext__(self):
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if item.finish_reason is not None:
            self._done = True
        return item

    def _cancelled_early(self, task) -> None:
        # cancelled before its first step, the task never ran its own handler: end the stream here
        if task.cancelled():
            from rocmforge_core.engine import Event

            self._queue.put_nowait(Event(finish_reason="cancelled"))

    async def _run(self, client, url: str, body: dict) -> None:
        from rocmforge_core.engine import Event

        httpx = _httpx()
        out = {"finish_reason": None, "usage": None, "ttft_ms": 0.0, "pieces": 0}
        start = time.perf_counter()

        def on_text(piece: str) -> None:
            out["pieces"] += 1
            self._queue.put_nowait(Event(text=piece))

        try:
            await _read_chat(client, url, body, out, on_text, start)
            final = Event(finish_reason=out["finish_reason"] or "stop", timings=_timings(out, start))
        except asyncio.CancelledError:
            final = Event(finish_reason="cancelled", timings=_timings(out, start))
        except RocmforgeError as exc:
            final = exc
        except httpx.TransportError as exc:
            final = transport_error(url, exc)
        except ValueError as exc:  # a data line that is not JSON
            final = RocmforgeError(f"the server's stream could not be read: {exc}")
        self._queue.put_nowait(final)


async def _read_chat(client, url: str, body: dict, out: dict, on_text, start: float) -> None:
    async with client.stream("POST", url + "/v1/chat/completions", json=body, headers=_headers()) as response:
        if response.status_code != 200:
            await response.aread()
            raise _fail(response)
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                _take(json.loads(line[6:]), out, on_text, start)


def _timings(out: dict, start: float):
    """The engine's Timings from what a client sees: the usage counts and the arrival times. The
    prompt's time is the time to the first token (the server's queueing included)."""
    from rocmforge_core.engine import Timings

    usage = out["usage"] or {}
    ttft = out["ttft_ms"]
    total = (time.perf_counter() - start) * 1e3
    return Timings(ttft_ms=ttft, prompt_tokens=usage.get("prompt_tokens", 0),
                   completion_tokens=usage.get("completion_tokens", out["pieces"]),
                   prompt_ms=ttft, gen_ms=max(total - ttft, 0.0) if ttft else 0.0)
