"""`rocmforge chat --server URL`: the same REPL (and piped one-shot answer), each reply streamed from an
OpenAI-compatible server instead of a local engine.

The conversation lives here, in the client: every turn sends it whole (system prompt first), and the
server applies its model's chat template and context rules. /save and /load act on this local copy.
"""

from __future__ import annotations

import asyncio
import sys

from rocmforge_cli import remote, repl, slash
from rocmforge_cli.render import Renderer


class RemoteChat(repl.Chat):
    """A repl.Chat whose replies come from a server: no engine, no KV cache of ours to keep warm."""

    def __init__(self, client, url: str, model: str | None, state: slash.ChatState, ui: Renderer):
        super().__init__(None, None, state, ui, context_shift=False)
        self.client, self.url, self.model = client, url, model

    @property
    def n_ctx(self) -> int | None:
        return self.state.model.n_ctx or None

    def forget_cache(self) -> None:
        pass  # the server keeps no state between requests

    def _submit(self):
        body = remote.chat_body(model=self.model, messages=self.state.conversation(),
                                max_tokens=self.state.max_tokens, sampling=self.state.sampling)
        return remote.ChatStream(self.client, self.url, body)


def model_info(url: str, model: str | None, card: dict) -> slash.ModelInfo:
    """What /show model reports: the server's model card, as far as it tells."""
    meta = card.get("meta") if isinstance(card.get("meta"), dict) else {}
    n_ctx = meta.get("n_ctx")
    return slash.ModelInfo(
        name=str(card.get("id") or model or "?"), path=url, architecture="?",
        backend=str(meta.get("backend") or "remote"), backend_reason=f"served by {url}",
        n_ctx=n_ctx if isinstance(n_ctx, int) else 0, template_name="the server's",
        template_source="(the server applies its model's chat template; it does not send it to clients)")


def run(*, url: str, model: str | None, params, max_tokens: int, system: str | None, verbose: bool,
        interactive: bool, piped: str | None, history_path) -> None:
    url = remote.check_url(url)
    remote._httpx()  # a missing client library is said before anything else
    ui = Renderer(interactive=interactive)
    if not interactive:
        reason = asyncio.run(_session(url, model, params, max_tokens, system, verbose, ui, piped=piped))
        if reason == "cancelled":
            raise KeyboardInterrupt  # stopped by a signal: exit 130 like generate
        return
    try:
        asyncio.run(_session(url, model, params, max_tokens, system, verbose, ui, history_path=history_path))
    except KeyboardInterrupt:  # a SIGINT between prompts: leave as quietly as Ctrl-D does
        pass


async def _session(url, model, params, max_tokens, system, verbose, ui: Renderer, *, piped=None,
                   history_path=None) -> str | None:
    async with remote.async_client() as client:
        info = model_info(url, model, await remote.server_model(client, url))
        state = slash.ChatState(model=info, sampling=slash.sampling_dict(params), max_tokens=max_tokens,
                                system=system or None, show_stats=verbose)
        chat = RemoteChat(client, url, model, state, ui)
        if piped is not None:
            if verbose:
                print(f"model {info.name} on the server {url}", file=sys.stderr)
            return await repl.answer(chat, piped)
        if ui.tty:
            ctx = f" · ctx {info.n_ctx}" if info.n_ctx else ""
            ui.message(f"{info.name} · server {url}{ctx}")
            ui.message("Type a message; /help for commands; Ctrl-D or /bye to leave.")
        await repl.converse(chat, ui, history_path=history_path)
        return None
