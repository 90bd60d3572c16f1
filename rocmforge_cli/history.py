"""The chat's input history: where its file lives, and a `\"\"\"` block kept as one entry.

prompt_toolkit stores each accepted line. A block typed line by line would become one entry per line,
so Up could recall only pieces of it; here the lines of an open block are held back and stored
together once the block closes, in the form that sends it again when recalled and accepted.
"""

from __future__ import annotations

import os
from pathlib import Path

from prompt_toolkit.history import FileHistory, InMemoryHistory

from rocmforge_cli.slash import LineAssembler

FILE_NAME = "chat_history"


def default_path() -> Path:
    """$ROCMFORGE_HOME/chat_history when ROCMFORGE_HOME is set (it holds all of rocmforge's files),
    else the file in the user data dir."""
    home = os.environ.get("ROCMFORGE_HOME")
    if home:
        return Path(home).expanduser() / FILE_NAME
    from platformdirs import user_data_path

    return user_data_path("rocmforge", appauthor=False) / FILE_NAME


class _Blocks:
    """Mixin for a prompt_toolkit History: the lines of a \"\"\" block become one entry."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._assembler = LineAssembler()
        self._block: list[str] = []

    def append_string(self, string: str) -> None:
        opened = self._assembler.in_block
        self._assembler.feed(string)
        if not opened and not self._assembler.in_block:  # a line on its own (or a whole """x""")
            super().append_string(string)
            return
        self._block.append(string)
        if not self._assembler.in_block:
            text, self._block = "\n".join(self._block), []
            super().append_string(text)

    def cancel_block(self) -> None:
        """Ctrl-C dropped the open block: its lines are not kept either."""
        self._assembler.cancel()
        self._block = []


class BlockFileHistory(_Blocks, FileHistory):
    pass


class BlockMemoryHistory(_Blocks, InMemoryHistory):
    pass
