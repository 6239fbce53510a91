"""How a stage script runs: its command line's paths become main()'s arguments, its errors one line.

Whatever stops a stage ends in one `error:` line and a non-zero exit, never a traceback: a PipelineError (bad
input), a full filesystem, Ctrl-C or SIGTERM. The outputs are built in temporary folders (llmpipe.files), removed
on the way out, so each of these leaves the outputs as they were when the stage started.
"""

from __future__ import annotations

import inspect
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from llmpipe.errors import PipelineError, clipped, one_line
from llmpipe.files import NO_SPACE, clear_dead_leftovers

METRICS_DIR = Path("metrics")  # where every stage writes its metrics (beside the folders of its paths)


def run(main: Callable[..., None]) -> None:
    """Call `main` with the command line's arguments as Paths, one per parameter of `main`.

    First the leftovers of killed runs are cleared from the folders the stage writes (files.clear_dead_leftovers).
    A wrong number of arguments prints the usage; a PipelineError, a full filesystem (ENOSPC, EDQUOT), Ctrl-C or
    SIGTERM print one `error:` line. All exit non-zero: 2 for the usage, 130 when interrupted, else 1.
    """
    names = list(inspect.signature(main).parameters)
    if len(sys.argv) - 1 != len(names):
        fail(f"usage: python {sys.argv[0]} {' '.join(name.upper() for name in names)} (see dvc.yaml)", status=2)
    paths = [Path(arg) for arg in sys.argv[1:]]
    for folder in {path.parent for path in paths} | {METRICS_DIR}:
        clear_dead_leftovers(folder)
    try:
        with interrupts_raised():
            main(*paths)
    except PipelineError as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail(f"interrupted: {sys.argv[0]} stopped and left its outputs as they were when it started: rerun it", 130)
    except OSError as error:
        if error.errno not in NO_SPACE:
            raise
        where = f" writing {error.filename}" if error.filename else ""
        fail(f"no space left on the device{where} ({error.strerror}): free space on that filesystem and rerun")


@contextmanager
def interrupts_raised() -> Iterator[None]:
    """Within the block, Ctrl-C and SIGTERM raise KeyboardInterrupt (even where the shell ignored SIGINT), once:
    a second one is ignored, so the clean-up of temporary outputs that the first starts runs to its end."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def interrupted(signum, frame):
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = {number: signal.signal(number, interrupted) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)  # None: set outside Python


def fail(message: str, status: int = 1) -> None:
    """Print `message` as one `error:` line on stderr and exit with `status`."""
    print(f"error: {clipped(one_line(message))}", file=sys.stderr)
    sys.exit(status)
