"""params.yaml, read strictly: each stage's section, every key checked, typos and missing keys refused.

A checker takes the dotted key (for the message) and the value, and returns the value as the stage uses
it, or raises PipelineError naming the key, the value (cut short) and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from llmpipe.errors import PipelineError, one_line, shown

PARAMS_FILE = Path("params.yaml")
# Every integer param ends up in numpy or torch, whose integers are 64-bit.
INT64_MAX = (1 << 63) - 1
SCHEMES = ("http", "https", "s3", "file")
# Far above any real params.yaml. DVC expands every YAML alias (&name / *name) of params.yaml as it reads it, so a
# file whose aliases expand past this would exhaust DVC's memory (docs/reliability.md).
MAX_PARAM_VALUES = 100_000

Checker = Callable[[str, Any], Any]


def load_params(section: str, schema: dict[str, Checker], path: Path = PARAMS_FILE) -> dict[str, Any]:
    """Return params.yaml's `section`, each key checked by its checker in `schema`.

    Raises PipelineError when the file is missing or not YAML, the section is absent, or a key is
    unknown, missing or has a bad value.
    """
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path} not found: run the stage from the project root") from None
    # PyYAML raises ValueError for impossible dates or floats (2001-13-45, !!float x) and recurses per nesting level.
    except (yaml.YAMLError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise PipelineError(f"{path} is not valid YAML ({one_line(str(error))}): fix it") from None
    if expands_past(params, MAX_PARAM_VALUES):
        raise PipelineError(
            f"{path} holds over {MAX_PARAM_VALUES:,} values once its YAML aliases are expanded, which DVC does "
            "until memory runs out: write the values out instead of aliasing them"
        )
    values = params.get(section) if isinstance(params, dict) else None
    if not isinstance(values, dict):
        raise PipelineError(f"{path} has no '{section}:' mapping: restore it (see docs/pipeline.md)")
    expected = ", ".join(f"{section}.{key}" for key in schema)
    unknown = sorted(set(values) - set(schema), key=str)
    if unknown:
        plain = isinstance(unknown[0], str) and unknown[0].isprintable() and len(unknown[0]) <= 80
        key = unknown[0] if plain else shown(unknown[0])
        raise PipelineError(f"{path}: unknown key {section}.{key} (expected {expected}): fix its spelling")
    missing = [key for key in schema if key not in values]
    if missing:
        raise PipelineError(f"{path}: missing key {section}.{missing[0]} (expected {expected}): add it")
    return {key: check(f"{section}.{key}", values[key]) for key, check in schema.items()}


def expands_past(value: Any, limit: int) -> bool:
    """Whether `value` holds more than `limit` values (keys, items and scalars) when every alias is counted
    each time it is used, as DVC expands them. Stops counting at the limit, so a bomb costs no more than that."""
    pending, count = [value], 0
    while pending:
        item = pending.pop()
        count += 1
        if count > limit:
            return True
        if isinstance(item, dict):
            pending += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            pending += item
    return False


def _bad(key: str, what: str, value: Any) -> PipelineError:
    return PipelineError(f"{key} must be {what}, got {shown(value)}: fix it in {PARAMS_FILE}")


def _integer(key: str, value: Any, minimum: int, kind: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= INT64_MAX:
        bound = f" up to {INT64_MAX:,}" if isinstance(value, int) and value > INT64_MAX else ""
        raise _bad(key, f"a {kind} integer{bound}", value)
    return value


def positive_int(key: str, value: Any) -> int:
    return _integer(key, value, 1, "positive")


def non_negative_int(key: str, value: Any) -> int:
    return _integer(key, value, 0, "non-negative")


def positive_int_or_null(key: str, value: Any) -> int | None:
    """A positive integer, or null (None) for "the default the stage derives"."""
    return None if value is None else _integer(key, value, 1, "positive (or null)")


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad(key, "true or false", value)
    return value


def text(key: str, value: Any) -> str:
    """A non-empty string that can be a path or URL: no NUL character, no lone surrogate (not UTF-8)."""
    if not isinstance(value, str) or not value.strip():
        raise _bad(key, "a non-empty string", value)
    if "\0" in value or not is_utf8(value):
        raise _bad(key, "text without NUL characters or lone surrogates", value)
    return value


def is_utf8(value: str) -> bool:
    """Whether `value` encodes to UTF-8 (a lone surrogate, from a YAML "\\udcff", does not)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def fraction(key: str, value: Any) -> float:
    """A number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise _bad(key, "a number from 0 up to (not including) 1", value)
    return float(value)


def positive_number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise _bad(key, "a positive number", value)
    return value


def non_negative_number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise _bad(key, "a non-negative number", value)
    return value


def one_of(*choices: str) -> Checker:
    """A checker accepting exactly one of `choices`."""

    def check(key: str, value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            raise _bad(key, " or ".join(choices), value)
        return value

    return check


def sha256_hex(key: str, value: Any) -> str:
    value = text(key, value).lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise PipelineError(f"{key} must be 64 hex digits (the file's sha256), got {shown(value)}: fix the pin")
    return value


def word_list(key: str, value: Any) -> list[str]:
    """A non-empty list of distinct non-empty strings."""
    if not isinstance(value, list) or not value or not all(isinstance(word, str) and word.strip() for word in value):
        raise _bad(key, "a non-empty list of words", value)
    if len(set(value)) != len(value):
        raise PipelineError(f"{key} lists a word twice: list each once")
    return value


def window_pairs(key: str, value: Any) -> list[tuple[int, int]]:
    """A non-empty list of [max_length, stride] pairs."""
    if not isinstance(value, list) or not value:
        raise _bad(key, "a non-empty list of [max_length, stride] pairs", value)
    pairs = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            raise PipelineError(f"{key} entry {shown(item)} is not a [max_length, stride] pair: write it as [4, 1]")
        pairs.append((positive_int(f"{key} max_length", item[0]), positive_int(f"{key} stride", item[1])))
    return pairs


# fetch.sources


def url_scheme(url: str) -> str:
    """The URL's scheme in lower case, "" for a plain path; only http, https and file are accepted."""
    scheme = urlparse(url).scheme.lower()
    if scheme and scheme not in SCHEMES:
        raise PipelineError(
            f"source {shown(url)} has scheme {shown(scheme)}: use one of {', '.join(SCHEMES)}, or a local path"
        )
    return scheme


@dataclass(frozen=True)
class FileSource:
    """One file of the corpus: an http(s) or file:// URL or a local path, and the sha256 it must have."""

    url: str
    sha256: str | None
    key: str = "fetch"  # where params.yaml sets it, for error messages: "fetch" is fetch.url itself


@dataclass(frozen=True)
class FolderSource:
    """A local folder of corpus files (llmpipe.corpus.CORPUS_SUFFIXES), at any depth."""

    path: str
    key: str


Source = FileSource | FolderSource


def source_entry(key: str, entry: Any) -> Source:
    """One entry of fetch.sources: {url: ..., sha256: ...} for a file, {path: ...} for a folder of corpus files."""
    keys = set(entry) if isinstance(entry, dict) else set()
    if keys == {"path"}:
        return FolderSource(text(f"{key}.path", entry["path"]), key)
    if "url" in keys and keys <= {"url", "sha256"}:
        url = text(f"{key}.url", entry["url"])
        pin = sha256_hex(f"{key}.sha256", entry["sha256"]) if "sha256" in keys else None
        remote = url_scheme(url) in ("http", "https", "s3")
        if remote and pin is None:
            raise PipelineError(f"{key} downloads {url} with no sha256 to check it: add {key}.sha256 (its sha256sum)")
        return FileSource(url, pin, key)
    raise _bad(key, "{url: ..., sha256: ...} or {path: <folder>}", entry)


def source_list(key: str, value: Any) -> list[Source]:
    if not isinstance(value, list):
        raise _bad(key, "a list ([] for none)", value)
    return [source_entry(f"{key}[{index}]", entry) for index, entry in enumerate(value)]
