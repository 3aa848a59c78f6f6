"""An exception as the one line an operator reads (a status PV, a log line, an FTP reply).

Every driver and plugin that turns a failure into text uses `reason`, so a disk-full is worded
the same everywhere, an OSError never shows "[Errno 28]" or a path the caller already names, and
no traceback or second line reaches a 40-character PV. Callers add their own context in front
("cannot open x.h5: " + reason(exc)). An exception raised by a user's algorithm is said
differently, with its type (`ndflow.algorithm.errors.one_line`, in the child's standard-library
package): there the type is what the author needs.
"""

from __future__ import annotations

import errno
import os
import re

# errnos that mean the disk (or a quota, or the file size limit) ran out of room
DISK_FULL = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
# HDF5 wraps the errno into its message text instead of setting it on the exception
_EMBEDDED_ERRNO = re.compile(r"errno = (\d+)")


def one_line(text: object) -> str:
    """`text` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


def reason(exc: BaseException) -> str:
    """A short single-line cause of `exc`, never empty:
    - disk full or file too large, named plainly (the errno on the exception, inside an HDF5
      message, or on the exception it was raised from);
    - a timeout (socket.timeout is TimeoutError): "timed out";
    - an OSError: its strerror ("Permission denied"), without the errno number or the path;
    - an EOFError without a message (ftplib's): "connection closed by server";
    - anything else: its message on one line, or the exception type's name if it has none."""
    number = _errno_of(exc)
    if number in DISK_FULL:
        return _disk_full(number)
    for cause in (exc.__cause__, exc.__context__):
        if cause is not None and getattr(cause, "errno", None) in DISK_FULL:
            return _disk_full(cause.errno)  # type: ignore[attr-defined]
    if number is not None and getattr(exc, "errno", None) is None:
        return os.strerror(number)  # only found in the message: say what it means
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return one_line(exc.strerror)
    if isinstance(exc, EOFError) and not str(exc):
        return "connection closed by server"
    return one_line(exc) or type(exc).__name__


def _errno_of(exc: BaseException) -> int | None:
    number = getattr(exc, "errno", None)
    if isinstance(number, int):
        return number
    found = _EMBEDDED_ERRNO.search(str(exc))
    return int(found.group(1)) if found else None


def _disk_full(number: int) -> str:
    return f"disk full or file too large ({errno.errorcode.get(number, number)})"
