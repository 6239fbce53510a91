"""What every stage shares: reading params.yaml, one-line errors, atomic outputs, metrics."""

from __future__ import annotations

import hashlib
import json
import os
import reprlib
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = Path("params.yaml")
METRICS_DIR = Path("metrics")


class PipelineError(Exception):
    """Bad input or environment: reported as one line that names the problem and the fix."""


def run(main: Callable[[], None]) -> None:
    """Run a stage's main(); a PipelineError becomes one line on stderr and exit status 1."""
    try:
        main()
    except PipelineError as error:
        print(f"error: {one_line(str(error))}", file=sys.stderr)
        sys.exit(1)


def one_line(message: str) -> str:
    """The message with its line breaks and runs of white space made single spaces: whatever it quotes
    (a parser's excerpt, a server's reason, a file name), an error stays one line."""
    return " ".join(message.split())


# Checkers: each takes the dotted key (for the message) and the value, and returns the value.

# Every integer param ends up in numpy or torch, whose integers are 64-bit.
INT64_MAX = (1 << 63) - 1


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel = 2  # with at most 4 items a level: a YAML alias bomb shows as a few nested "[...]"
_SHORT_REPR.maxlist = _SHORT_REPR.maxtuple = _SHORT_REPR.maxdict = _SHORT_REPR.maxset = 4


def shown(value: Any) -> str:
    """A value as an error message shows it: repr, cut short, so a huge or self-nested value stays one short line."""
    return _SHORT_REPR.repr(value)


def _integer(key: str, value: Any, minimum: int, kind: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= INT64_MAX:
        bound = f" up to {INT64_MAX:,}" if isinstance(value, int) and value > INT64_MAX else ""
        raise PipelineError(f"{key} must be a {kind} integer{bound}, got {shown(value)}: fix it in {PARAMS_FILE}")
    return value


def positive_int(key: str, value: Any) -> int:
    return _integer(key, value, 1, "positive")


def non_negative_int(key: str, value: Any) -> int:
    return _integer(key, value, 0, "non-negative")


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise PipelineError(f"{key} must be true or false, got {shown(value)}: fix it in {PARAMS_FILE}")
    return value


def text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PipelineError(f"{key} must be a non-empty string, got {shown(value)}: fix it in {PARAMS_FILE}")
    return value


Checker = Callable[[str, Any], Any]


def load_params(section: str, schema: dict[str, Checker], path: Path = PARAMS_FILE) -> dict[str, Any]:
    """Return params.yaml's `section`, each key checked; unknown and missing keys are errors."""
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path} not found: run the stage from the project root") from None
    # PyYAML raises ValueError for impossible dates or floats (2001-13-45, !!float x) and recurses per nesting level.
    except (yaml.YAMLError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise PipelineError(f"{path} is not valid YAML ({one_line(str(error))}): fix it") from None
    values = params.get(section) if isinstance(params, dict) else None
    if not isinstance(values, dict):
        raise PipelineError(f"{path} has no '{section}:' mapping: restore it (see README, stages)")
    expected = ", ".join(f"{section}.{key}" for key in schema)
    unknown = sorted(set(values) - set(schema), key=str)
    if unknown:
        key = unknown[0] if isinstance(unknown[0], str) and unknown[0].isprintable() else shown(unknown[0])
        raise PipelineError(f"{path}: unknown key {section}.{key} (expected {expected}): fix its spelling")
    missing = [key for key in schema if key not in values]
    if missing:
        raise PipelineError(f"{path}: missing key {section}.{missing[0]} (expected {expected}): add it")
    return {key: check(f"{section}.{key}", values[key]) for key, check in schema.items()}


def _clear_leftovers(path: Path) -> None:
    """Remove temporary siblings that a killed run left behind."""
    for leftover in path.parent.glob(f".{path.name}.*-*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


@contextmanager
def output_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; when the block succeeds it replaces `path` whole.

    An error (or a kill) leaves `path` as it was: no reader ever sees a half-written output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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
    finally:
        tmp.unlink(missing_ok=True)


def id_bytes(ids, chunk: int = 1 << 24) -> Iterator[bytes]:
    """A token array's bytes a slice at a time, so a memory-mapped corpus never has to fit in memory."""
    for start in range(0, len(ids), chunk):
        yield ids[start : start + chunk].tobytes()


def ids_sha256(ids) -> str:
    digest = hashlib.sha256()
    for data in id_bytes(ids):
        digest.update(data)
    return digest.hexdigest()


def to_json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode("utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_file_atomic(path, to_json(obj))


def write_metrics(stage: str, metrics: dict[str, Any]) -> None:
    """metrics/<stage>.json. DVC shows only scalar metrics, so lists (ids, shapes) are written as
    their JSON text, "[8, 4]": `dvc metrics show` prints them and json.loads reads them back."""
    write_json(
        METRICS_DIR / f"{stage}.json",
        {key: json.dumps(list(value)) if isinstance(value, (list, tuple)) else value for key, value in metrics.items()},
    )


def read_json(path: str | Path, fields: dict[str, type | tuple[type, ...]] | None = None) -> Any:
    """The JSON in `path`; with `fields`, an object holding each named field (require_fields)."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path} not found: run `dvc repro` to build it") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise PipelineError(f"{path} is corrupt ({error}): run `dvc checkout` or `dvc repro -f`") from None
    return require_fields(obj, fields or {}, path)


def require_fields(obj: Any, fields: dict[str, type | tuple[type, ...]], where: str | Path) -> Any:
    """`obj`, if it is an object holding each named field with a value of its type (JSON's true is not an int).

    A sidecar the pipeline wrote and someone edited is then one error line here, not a KeyError further on.
    """
    for field, kinds in fields.items():
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        if not isinstance(obj, dict) or type(obj.get(field)) not in kinds:
            names = " or ".join(kind.__name__ for kind in kinds)
            raise PipelineError(
                f"{where} is corrupt ({field!r} is missing or not {names}): run `dvc checkout` or `dvc repro -f`"
            )
    return obj
