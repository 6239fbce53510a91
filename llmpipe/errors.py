"""The one error type of the project, and how a value or message is shown in it."""

from __future__ import annotations

import reprlib
from typing import Any

# The longest message an error carries. Past it the middle is cut, keeping the start (the problem) and the end
# (the fix): a message that quotes a hostile value in full (a 1 MB URL or path) stays one readable line.
MAX_MESSAGE_CHARS = 2000


class PipelineError(Exception):
    """Bad input or environment, as one message that names the problem and the fix.

    Stages print it as one `error:` line; library callers catch it like any other exception. The message is
    cut to MAX_MESSAGE_CHARS (see clipped).
    """

    def __init__(self, message: Any = "") -> None:
        super().__init__(clipped(str(message)))


def one_line(message: str) -> str:
    """`message` with its line breaks and runs of white space made single spaces.

    Whatever an error quotes (a parser's excerpt, a server's reason, a file name), it stays one line.
    """
    return " ".join(message.split())


def clipped(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`message`, or when it is longer than `limit` characters its first two thirds and last third of that,
    with how much was cut in between."""
    if len(message) <= limit:
        return message
    head, tail = message[: limit * 2 // 3], message[len(message) - limit // 3 :]
    return f"{head} [... {len(message) - len(head) - len(tail)} characters cut ...] {tail}"


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel = 2  # with at most 4 items a level: a YAML alias bomb shows as a few nested "[...]"
_SHORT_REPR.maxlist = _SHORT_REPR.maxtuple = _SHORT_REPR.maxdict = _SHORT_REPR.maxset = 4
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 300  # a path or URL shows whole; a megabyte of one does not


def shown(value: Any) -> str:
    """`value` as an error message quotes it: its repr, cut short, so a huge or self-nested value stays short."""
    return _SHORT_REPR.repr(value)
