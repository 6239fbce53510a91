"""Stage fetch: get the corpus and prove it is the pinned one.

Sources are tried in order: the local copy named by $CORPUS_MIRROR (a file, or a folder holding the
file under the URL's name), then `fetch.url` (http, https, file:// or a local path). Whatever the
source, the bytes must match `fetch.sha256`, so dvc.lock is the same online and offline.
"""

from __future__ import annotations

import codecs
import hashlib
import http.client
import os
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from stages.common import PipelineError, load_params, output_dir, run, text, write_metrics

OUT_DIR = Path("data/raw")
MIRROR_ENV = "CORPUS_MIRROR"
TIMEOUT_SECONDS = 30
CHUNK_BYTES = 1 << 20
SCHEMES = ("http", "https", "file")


def sha256_hex(key: str, value: object) -> str:
    value = text(key, value).lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise PipelineError(f"{key} must be 64 hex digits (the corpus's sha256), got {value!r}")
    return value


SCHEMA = {"url": text, "sha256": sha256_hex}


@dataclass(frozen=True)
class Corpus:
    file: str
    bytes: int
    chars: int
    sha256: str


def file_name(url: str) -> str:
    """The name the corpus is stored under: the last part of the URL's path."""
    path = unquote(urlparse(url).path)
    name = Path(path).name
    if not name or path.endswith("/"):
        raise PipelineError(f"fetch.url {url!r} does not end in a file name: point it at the file itself")
    return name


def sources(url: str, mirror: str | None) -> list[str]:
    """Where to look for the corpus, first choice first."""
    if not mirror:
        return [url]
    mirror_path = Path(mirror)
    return [str(mirror_path / file_name(url) if mirror_path.is_dir() else mirror_path), url]


def open_source(source: str) -> tuple[BinaryIO, int | None]:
    """Open a source for reading; return the stream and its size when known."""
    scheme = urlparse(source).scheme.lower()
    if scheme in ("http", "https"):
        request = urllib.request.Request(source, headers={"User-Agent": "ch2-pipeline"})
        response = urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS)
        length = response.headers.get("Content-Length")
        return response, int(length) if length and length.isdigit() else None
    if scheme == "file":
        source = unquote(urlparse(source).path)
    elif scheme:
        raise PipelineError(f"source {source!r} has scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
    return open(source, "rb"), os.path.getsize(source)


def copy_and_hash(reader: BinaryIO, size: int | None, dest: Path) -> tuple[int, int, str, str | None]:
    """Stream `reader` into `dest`; return bytes, UTF-8 characters, sha256 and the first UTF-8 error."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    num_bytes = num_chars = 0
    utf8_error = None
    with open(dest, "wb") as out, tqdm(total=size, unit="B", unit_scale=True, disable=None, desc="fetch") as bar:
        while True:
            chunk = reader.read(CHUNK_BYTES)
            out.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
            if utf8_error is None:
                # The decoder may hold the first bytes of a character from the previous chunk.
                offset = num_bytes - len(decoder.getstate()[0])
                try:
                    num_chars += len(decoder.decode(chunk, final=not chunk))
                except UnicodeDecodeError as error:
                    utf8_error = f"{error.reason} at byte {offset + error.start}"
            num_bytes += len(chunk)
            if not chunk:
                break
    return num_bytes, num_chars, digest.hexdigest(), utf8_error


def read_first_source(url: str, mirror: str | None, dest: Path) -> tuple[str, tuple[int, int, str, str | None]]:
    """Copy the first source that can be read into `dest`; say which one it was."""
    failures = []
    for source in sources(url, mirror):
        try:
            reader, size = open_source(source)
            with reader:
                return source, copy_and_hash(reader, size, dest)
        except (OSError, http.client.HTTPException) as error:
            reason = error.reason if isinstance(error, urllib.error.URLError) else error
            failures.append(f"{source} ({reason})")
    raise PipelineError(
        f"could not read the corpus from {'; nor from '.join(failures)}: "
        f"check fetch.url, or set {MIRROR_ENV} to a local copy (README: offline use)"
    )


def fetch(url: str, sha256: str, out_dir: Path, mirror: str | None = None) -> Corpus:
    """Store the corpus as out_dir/<file name>, checked against `sha256`; on any error out_dir is kept."""
    name = file_name(url)
    with output_dir(out_dir) as tmp:
        source, (num_bytes, num_chars, digest, utf8_error) = read_first_source(url, mirror, tmp / name)
        if digest != sha256:
            raise PipelineError(
                f"{source} has sha256 {digest}, but fetch.sha256 pins {sha256}: "
                "fix the source, or update the pin if the new corpus is intended"
            )
        if num_bytes == 0:
            raise PipelineError(f"{source} is empty: point fetch.url at a corpus with text in it")
        if utf8_error:
            raise PipelineError(f"{source} is not UTF-8 text ({utf8_error}): convert it to UTF-8")
    print(f"fetch: {num_bytes} bytes from {source}")
    return Corpus(name, num_bytes, num_chars, digest)


def main() -> None:
    params = load_params("fetch", SCHEMA)
    corpus = fetch(params["url"], params["sha256"], OUT_DIR, os.environ.get(MIRROR_ENV))
    write_metrics("fetch", asdict(corpus))


if __name__ == "__main__":
    run(main)
