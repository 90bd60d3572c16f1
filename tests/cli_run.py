"""Drive the real `rocmforge` entry point (rocmforge_cli.app.main) in process, stdout and stderr apart."""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def run_main(*args: str, stdin: str = "") -> Result:
    """main(args) with stdin piped from `stdin`: the exit code main returns, and what it printed."""
    from rocmforge_cli.app import main

    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        sys.stdin = saved
    return Result(code, out.getvalue(), err.getvalue())


def assert_one_line_error(result: Result, needle: str = "", code: int = 2) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.code == code, result
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert needle in lines[0], lines[0]
    return lines[0]
