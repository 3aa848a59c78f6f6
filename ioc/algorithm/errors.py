"""An exception as an operator reads it: one line, and the traceback from the user's code on.

`one_line` is public: it is the child's way of saying what went wrong, and the core may use the
same one (standard library only).
"""

from __future__ import annotations

import traceback
from pathlib import Path


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message`; a SyntaxError names its file and line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f"SyntaxError: {exc.msg} ({Path(exc.filename or '').name} line {exc.lineno})"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def user_traceback(exc: BaseException, path: str) -> str:
    """The traceback from the user's code onwards (our frames are noise to them)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != path:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))
