"""Errors that front ends turn into one `error: ...` line and an exit code."""

from __future__ import annotations


class RocmforgeError(Exception):
    """A failure we can explain in one line. Exit code 1: something went wrong inside."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message.strip().replace("\n", " ")
        if self.hint:
            text += f" ({self.hint.strip()})"
        return text


class BadInputError(RocmforgeError):
    """The user's input is wrong: a missing or corrupt file, a bad flag value. Exit code 2."""

    exit_code = 2


class UnsupportedModelError(BadInputError):
    """A well-formed GGUF that we cannot run: unknown architecture, unsupported tensor type."""


class OfflineError(RocmforgeError):
    """A download was needed and the package index could not be reached."""
