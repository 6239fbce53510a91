"""What every stage shares: reading params.yaml, one-line errors, atomic outputs, metrics."""

from __future__ import annotations

import json
import os
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
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


# Checkers: each takes the dotted key (for the message) and the value, and returns the value.


def positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PipelineError(f"{key} must be a positive integer, got {value!r}: fix it in {PARAMS_FILE}")
    return value


def non_negative_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PipelineError(f"{key} must be a non-negative integer, got {value!r}: fix it in {PARAMS_FILE}")
    return value


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise PipelineError(f"{key} must be true or false, got {value!r}: fix it in {PARAMS_FILE}")
    return value


def text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PipelineError(f"{key} must be a non-empty string, got {value!r}: fix it in {PARAMS_FILE}")
    return value


Checker = Callable[[str, Any], Any]


def load_params(section: str, schema: dict[str, Checker], path: Path = PARAMS_FILE) -> dict[str, Any]:
    """Return params.yaml's `section`, each key checked; unknown and missing keys are errors."""
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path} not found: run the stage from the project root") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise PipelineError(f"{path} is not valid YAML ({' '.join(str(error).split())}): fix it") from None
    values = params.get(section) if isinstance(params, dict) else None
    if not isinstance(values, dict):
        raise PipelineError(f"{path} has no '{section}:' mapping: restore it (see README, stages)")
    expected = ", ".join(f"{section}.{key}" for key in schema)
    unknown = sorted(set(values) - set(schema), key=str)
    if unknown:
        raise PipelineError(f"{path}: unknown key {section}.{unknown[0]} (expected {expected}): fix its spelling")
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


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path} not found: run `dvc repro` to build it") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise PipelineError(f"{path} is corrupt ({error}): run `dvc checkout` or `dvc repro -f`") from None
