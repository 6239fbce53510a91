"""How a stage script runs: its command line's paths become main()'s arguments, its errors one line."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from pathlib import Path

from llmpipe.errors import PipelineError, one_line


def run(main: Callable[..., None]) -> None:
    """Call `main` with the command line's arguments as Paths, one per parameter of `main`.

    A wrong number of arguments prints the usage; a PipelineError prints one `error:` line. Both exit non-zero.
    """
    names = list(inspect.signature(main).parameters)
    if len(sys.argv) - 1 != len(names):
        fail(f"usage: python {sys.argv[0]} {' '.join(name.upper() for name in names)} (see dvc.yaml)", status=2)
    try:
        main(*map(Path, sys.argv[1:]))
    except PipelineError as error:
        fail(str(error))


def fail(message: str, status: int = 1) -> None:
    """Print `message` as one `error:` line on stderr and exit with `status`."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    sys.exit(status)
