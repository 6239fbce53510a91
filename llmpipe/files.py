"""Outputs that appear whole or not at all, and JSON read back with its fields checked.

Every output is built under a temporary name beside its place and renamed in, so a reader never sees a
half-written file or folder, and an error or a kill leaves the previous output as it was.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmpipe.errors import PipelineError, one_line

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # a full filesystem, or the user's quota on it
# A temporary sibling: `.<name>.tmp-<pid>` (being built) or `.<name>.old-<pid>` (being replaced).
LEFTOVER = re.compile(r"\..+\.(?:tmp|old)-(\d+)")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clear_leftovers(path: Path) -> None:
    """Remove the temporary siblings (`.<name>.tmp-*`, `.<name>.old-*`) that a killed run left beside `path`."""
    for leftover in path.parent.glob(f".{path.name}.*-*"):
        _remove(leftover)


def is_running(pid: int) -> bool:
    """Whether a process with this id exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def clear_dead_leftovers(folder: Path) -> None:
    """Remove every temporary sibling in `folder` (of any output) whose process has ended.

    A killed run leaves them; a stage that DVC restores from its run-cache does not run, so cannot clear its
    own. Those of a process still running (another stage, a run by hand) are left alone.
    """
    for entry in Path(folder).glob(".*.*-*"):
        match = LEFTOVER.fullmatch(entry.name)
        if match and not is_running(int(match[1])):
            _remove(entry)


def _named(error: BaseException, tmp: Path, path: Path) -> None:
    """Make a full-filesystem error about `tmp` (or about no file: a write() names none) name `path`, the output
    the user knows, for the message llmpipe.cli prints."""
    if isinstance(error, OSError) and error.errno in NO_SPACE:
        name = error.filename
        if name is None or (isinstance(name, str) and Path(name).is_relative_to(tmp)):
            error.filename = str(path)


@contextmanager
def output_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; when the block succeeds it replaces `path` whole.

    An error (or a kill) leaves `path` as it was: no reader ever sees a half-written output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_leftovers(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        _named(error, tmp, path)
        raise
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old)
    else:
        tmp.rename(path)


def write_file_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to a temporary name beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as error:
        _named(error, tmp, path)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def to_json(obj: Any) -> bytes:
    """`obj` as the project writes JSON: indented by two, one final newline, UTF-8."""
    return (json.dumps(obj, indent=2) + "\n").encode("utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as JSON to `path`, atomically."""
    write_file_atomic(path, to_json(obj))


REBUILD = "run `dvc repro` to build it"
RESTORE = "run `dvc checkout` or `dvc repro -f`"


def read_json(
    path: str | Path,
    fields: dict[str, type | tuple[type, ...]] | None = None,
    *,
    missing: str = REBUILD,
    corrupt: str = RESTORE,
) -> Any:
    """The JSON in `path`; with `fields`, an object holding each named field (see require_fields).

    Raises PipelineError naming `path` when it is missing (the message ends in `missing`, the fix) or
    not JSON (ending in `corrupt`); callers outside the pipeline pass fixes that fit them.
    """
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{Path(path).absolute()} not found: {missing}") from None
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as error:
        raise PipelineError(f"{path} is corrupt ({one_line(str(error))}): {corrupt}") from None
    return require_fields(obj, fields or {}, path, fix=corrupt)


def require_fields(
    obj: Any, fields: dict[str, type | tuple[type, ...]], where: str | Path, *, fix: str = RESTORE
) -> Any:
    """`obj`, if it is an object holding each named field with a value of its type (JSON's true is not an int).

    A sidecar that someone edited is then one error here, not a KeyError further on.
    Raises PipelineError naming `where`, the field and `fix`.
    """
    for field, kinds in fields.items():
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        if not isinstance(obj, dict) or type(obj.get(field)) not in kinds:
            names = " or ".join(kind.__name__ for kind in kinds)
            raise PipelineError(f"{where} is corrupt ({field!r} is missing or not {names}): {fix}")
    return obj
