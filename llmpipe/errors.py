"""The one error type of the project, and how a value or message is shown in it."""

from __future__ import annotations

import reprlib
from typing import Any


class PipelineError(Exception):
    """Bad input or environment, as one message that names the problem and the fix.

    Stages print it as one `error:` line; library callers catch it like any other exception.
    """


def one_line(message: str) -> str:
    """`message` with its line breaks and runs of white space made single spaces.

    Whatever an error quotes (a parser's excerpt, a server's reason, a file name), it stays one line.
    """
    return " ".join(message.split())


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel = 2  # with at most 4 items a level: a YAML alias bomb shows as a few nested "[...]"
_SHORT_REPR.maxlist = _SHORT_REPR.maxtuple = _SHORT_REPR.maxdict = _SHORT_REPR.maxset = 4


def shown(value: Any) -> str:
    """`value` as an error message quotes it: its repr, cut short, so a huge or self-nested value stays short."""
    return _SHORT_REPR.repr(value)
