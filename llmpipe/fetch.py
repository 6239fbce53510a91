"""Get the corpus and prove each document is the pinned one (the pipeline's fetch stage).

The corpus is `fetch.url` (pinned by `fetch.sha256`) plus the entries of `fetch.sources`: files (http, https,
s3://, file:// or a local path, each with the sha256 it must have; remote files must have one) and local folders of
corpus files (.txt, .jsonl, .json, .parquet, plain or .gz/.zst, at any depth).
A file is stored as data/raw/<its name>, a folder as data/raw/<its name>/<the same layout>. A pinned file is
read from $CORPUS_MIRROR first when the mirror holds it (a folder holding the file under its name, or for
`fetch.url` the file itself); the pin proves it is the same, so dvc.lock is the same online and offline.

Downloads wait at most `fetch.timeout_seconds` for each connect or read, stop any file over `fetch.max_bytes` or
still arriving after `fetch.deadline_seconds`, and try again, up to `fetch.retries` times with exponential backoff
(each wait at most MAX_BACKOFF_SECONDS, all of a file's at most MAX_BACKOFF_TOTAL_SECONDS), after a failure that may
pass on its own: HTTP 5xx, 408 or 429, a timeout, a dropped connection, a body cut short of its Content-Length.
Anything else (HTTP 4xx, a redirect loop, a wrong sha256, the size cap, the deadline) fails at once.

Only regular files are read: a FIFO, device or socket is refused (a read could block forever, or never end), and
so is a link in a folder source to a file outside that folder, unless `fetch.allow_outside_symlinks` is true.
"""

from __future__ import annotations

import codecs
import hashlib
import http.client
import io
import os
import stat
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path
from time import monotonic, sleep
from typing import Any, BinaryIO, NamedTuple
from urllib.parse import unquote, urlparse

from llmpipe.corpus import CORPUS_SUFFIXES, corpus_format
from llmpipe.errors import PipelineError, one_line, shown
from llmpipe.files import NO_SPACE, output_dir
from llmpipe.params import FileSource, FolderSource, Source, is_utf8, url_scheme

MIRROR_ENV = "CORPUS_MIRROR"
CHUNK_BYTES = 1 << 20
BACKOFF_SECONDS = 1.0  # the wait before the first retry; each later one waits twice as long as the one before
MAX_BACKOFF_SECONDS = 30.0  # ... up to this
MAX_BACKOFF_TOTAL_SECONDS = 300.0  # all the waits for one file: past it, the last failure is the one reported
DEADLINE_SECONDS = 3600.0  # fetch.deadline_seconds where Limits is built without it
RETRIED_HTTP_STATUS = (408, 429)  # besides every 5xx: the server may answer in a moment
# Failures that move on to the next place to read from; anything else is a bug, or a PipelineError already.
READ_ERRORS = (OSError, http.client.HTTPException, http.client.InvalidURL)


@dataclass(frozen=True)
class Limits:
    """What a download may take: each wait for the network, the size of each file, the retries per file, and
    the time for one file, all its tries and waits included."""

    timeout_seconds: float
    max_bytes: int
    retries: int
    deadline_seconds: float = DEADLINE_SECONDS


@dataclass(frozen=True)
class Document:
    file: str  # its path under data/raw
    bytes: int
    chars: int
    sha256: str


# Names under data/raw


def file_name(url: str) -> str:
    """The last part of the URL's path: the name its file is stored under ("" if the path ends in "/")."""
    path = unquote(urlparse(url).path)
    return "" if path.endswith("/") else Path(path).name


def param(source: Source) -> tuple[str, str]:
    """The params.yaml key that names the source, and its value."""
    if isinstance(source, FolderSource):
        return f"{source.key}.path", source.path
    return f"{source.key}.url", source.url


def stored_name(source: Source) -> str:
    """The name a source gets in data/raw: the last part of its URL or path."""
    key, value = param(source)
    name = Path(os.path.abspath(value)).name if isinstance(source, FolderSource) else file_name(value)
    if not name:
        raise PipelineError(
            f"{key} {shown(value)} does not end in a file name: point it at the file (or folder) itself"
        )
    if name.startswith("."):
        raise PipelineError(
            f"{key} {shown(value)} ends in a hidden name, {shown(name)}, which tokenize skips: rename it"
        )
    if "\0" in name:
        raise PipelineError(f"{key} {shown(value)} names a file with a NUL character (%00), {shown(name)}: rename it")
    return name


def stored_names(sources: list[Source], out_dir: Path) -> list[str]:
    """Each source's name in data/raw; two sources with one name would overwrite each other."""
    names = [stored_name(source) for source in sources]
    for name in names:
        keys = [param(source)[0] for source, other in zip(sources, names, strict=True) if other == name]
        if len(keys) > 1:
            raise PipelineError(
                f"{' and '.join(keys)} would both be stored as {out_dir / name}: give one of them another name"
            )
    return names


def candidates(source: FileSource, name: str, mirror: str | None) -> list[str]:
    """Where to read a file from, first choice first. A $CORPUS_MIRROR copy stands in only for a pinned file, as only
    the pin proves it is the same: <mirror>/<name> if the mirror is a folder, the mirror itself for fetch.url."""
    if mirror and source.sha256:
        if Path(mirror).is_dir():
            return [str(Path(mirror) / name), source.url]
        if source.key == "fetch":
            return [mirror, source.url]
    return [source.url]


# Reading


class RedirectHandler(urllib.request.HTTPRedirectHandler):
    """urllib's redirects (at most 10, no loops), refusing any to a scheme other than http and https."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlparse(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, f"redirect to {newurl} refused: not http(s)", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def open_location(location: str | Path, timeout_seconds: float) -> tuple[BinaryIO, int | None]:
    """Open a URL (str) or a local file (a str without scheme, or a Path); return the stream and its size if known."""
    if isinstance(location, str):
        scheme = url_scheme(location)
        if scheme in ("http", "https"):
            request = urllib.request.Request(location, headers={"User-Agent": "ch2-pipeline"})
            # Built per call, so the proxy settings are the environment's at the time of the download.
            response = urllib.request.build_opener(RedirectHandler).open(request, timeout=timeout_seconds)
            length = response.headers.get("Content-Length")
            return response, int(length) if length and length.isdigit() else None
        if scheme == "s3":
            return open_s3(location)
        location = Path(unquote(urlparse(location).path) if scheme == "file" else location)
        if "\0" in str(location):
            raise PipelineError(f"{shown(str(location))} holds a NUL character (%00), which no path can: fix the URL")
    return open_regular(location)


def open_s3(url: str) -> tuple[BinaryIO, int]:
    """An s3:// object and its size, read with the settings of the project's DVC remote on S3 (the default remote
    if it is on S3, else the first that is: its endpointurl, credentials, profile and region, from .dvc/config
    and config.local), else with boto's own (AWS_* variables, ~/.aws). Raises PipelineError without s3fs (which
    dvc-s3 brings), OSError when the object cannot be read."""
    try:
        import s3fs
    except ImportError:
        raise PipelineError(f"{url}: s3:// sources need dvc-s3: run `make remote-s3` or pip install dvc-s3") from None
    fs = s3fs.S3FileSystem(**s3_options(), skip_instance_cache=True)
    try:
        size = fs.info(url)["size"]
        return io.BufferedReader(fs.open(url, "rb"), CHUNK_BYTES), size
    except OSError:
        raise
    except Exception as error:  # botocore's errors: no credentials, endpoint unreachable, access denied
        raise OSError(f"{type(error).__name__}: {error}") from None


def s3_options() -> dict[str, Any]:
    """s3fs's options from the project's DVC remote on S3 (see open_s3); {} when there is none."""
    from dvc.config import Config

    config = Config.from_cwd()
    remotes = config.get("remote", {})
    default = config.get("core", {}).get("remote")
    names = [name for name in [default, *remotes] if name in remotes and remotes[name]["url"].startswith("s3://")]
    if not names:
        return {}
    remote = remotes[names[0]]
    client = {"endpoint_url": remote.get("endpointurl"), "region_name": remote.get("region")}
    options = {"key": remote.get("access_key_id"), "secret": remote.get("secret_access_key")}
    options |= {"token": remote.get("session_token"), "profile": remote.get("profile")}
    return {**{k: v for k, v in options.items() if v}, "client_kwargs": {k: v for k, v in client.items() if v}}


def special_kind(mode: int) -> str | None:
    """What a file of this st_mode is when it is not a regular file: "a FIFO", "a socket", ... (None if regular)."""
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character device"}
    kinds |= {stat.S_ISBLK: "a block device", stat.S_ISDIR: "a folder"}
    return None if stat.S_ISREG(mode) else next((kind for test, kind in kinds.items() if test(mode)), "not a file")


def refuse_special(path: Path, mode: int) -> None:
    """Raise PipelineError when `mode` (path's) is not a regular file's: reading a FIFO waits for a writer that may
    never come, a device like /dev/zero never ends."""
    kind = special_kind(mode)
    if kind:
        raise PipelineError(
            f"{path} is {kind}, not a regular file, which is all fetch reads: remove it from the sources"
        )


def open_regular(path: Path) -> tuple[BinaryIO, int]:
    """Open a local regular file; return it and its size. Raises PipelineError for anything else, OSError if the
    file cannot be opened."""
    refuse_special(path, os.stat(path).st_mode)
    # Non-blocking, so that a FIFO swapped in since the stat cannot block the open; fstat then checks the file opened.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        info = os.fstat(fd)
        refuse_special(path, info.st_mode)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb"), info.st_size


def checked_chunks(
    reader: BinaryIO, size: int | None, limits: Limits, location: str | Path, deadline: float
) -> Iterator[bytes]:
    """The bytes of `reader` chunk by chunk, stopped as soon as they pass limits.max_bytes (or the announced size
    does), or when time.monotonic() passes `deadline` (checked after each read, each bounded by the timeout)."""
    max_bytes = limits.max_bytes
    too_large = f"{location} is larger than fetch.max_bytes ({max_bytes} bytes): raise it if this is the file you want"
    if size is not None and size > max_bytes:
        raise PipelineError(too_large)
    total = 0
    # read1: whatever one read of the socket brings, so a trickle (a byte a second) cannot hold a read for hours.
    # Never ask for more than one byte past the cap: a stream without Content-Length stops right there.
    while chunk := reader.read1(min(CHUNK_BYTES, max_bytes + 1 - total)):
        total += len(chunk)
        if total > max_bytes:
            raise PipelineError(too_large)
        if monotonic() > deadline:
            raise PipelineError(
                f"{location} was still arriving after fetch.deadline_seconds ({limits.deadline_seconds:g} s), "
                f"{total} bytes received{f' of {size}' if size is not None else ''}: raise fetch.deadline_seconds "
                "if the source is only slow, or fetch the file from elsewhere"
            )
        yield chunk
    if size is not None and total < size:
        # http.client ends a body early without an error when the server closes the connection.
        raise ConnectionResetError(f"the connection closed after {total} of {size} bytes")


class Copied(NamedTuple):
    bytes: int
    chars: int
    sha256: str
    utf8_error: str | None  # the first one, with its byte offset


def is_text(name: str) -> bool:
    """Whether a corpus file of this name holds plain UTF-8 (not gzip, zstd or Parquet): only then are its
    characters counted and checked as it is copied (tokenize checks the rest as it reads them)."""
    kind = corpus_format(name)
    return kind is None or (kind[0] != "parquet" and kind[1] is None)


def copy_and_hash(chunks: Iterable[bytes], dest: Path, size: int | None) -> Copied:
    """Write `chunks` to `dest`, counting bytes and, for a plain-text name (is_text), UTF-8 characters, and hashing
    them as they pass."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    text = is_text(dest.name)
    decoder = codecs.getincrementaldecoder("utf-8")()
    num_bytes = num_chars = 0
    utf8_error = None
    with (
        open(dest, "wb") as out,
        tqdm(total=size, unit="B", unit_scale=True, disable=None, leave=False, desc=dest.name) as bar,
    ):
        for chunk in chain(chunks, [b""]):  # the empty last chunk makes the decoder report a cut-off character
            out.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
            if utf8_error is None and text:
                # The decoder may hold the first bytes of a character from the previous chunk.
                offset = num_bytes - len(decoder.getstate()[0])
                try:
                    num_chars += len(decoder.decode(chunk, final=not chunk))
                except UnicodeDecodeError as error:
                    utf8_error = f"{error.reason} at byte {offset + error.start}"
            num_bytes += len(chunk)
    return Copied(num_bytes, num_chars, digest.hexdigest(), utf8_error)


def download(location: str | Path, dest: Path, limits: Limits, deadline: float | None = None) -> Copied:
    """Copy `location` to `dest` within the limits; `deadline` is a time.monotonic() instant (default: one
    limits.deadline_seconds from now)."""
    deadline = monotonic() + limits.deadline_seconds if deadline is None else deadline
    # The connect and the first wait end by the deadline too.
    reader, size = open_location(location, max(0.001, min(limits.timeout_seconds, deadline - monotonic())))
    with reader:
        return copy_and_hash(checked_chunks(reader, size, limits, location, deadline), dest, size)


def is_transient(error: Exception) -> bool:
    """Whether trying again may help: a server error, a timeout, a dropped connection, a body cut short."""
    if isinstance(error, urllib.error.HTTPError):
        return error.code >= 500 or error.code in RETRIED_HTTP_STATUS
    if isinstance(error, urllib.error.URLError):
        error = error.reason
    transient = (TimeoutError, ConnectionError, http.client.HTTPException)
    # Nothing listening is not going to change in seconds: go on to the next place to read from.
    return isinstance(error, transient) and not isinstance(error, ConnectionRefusedError)


def describe(error: Exception) -> str:
    """The reason of a failed read, on one line."""
    if isinstance(error, urllib.error.HTTPError):
        reason = f"HTTP {error.code} {error.reason}"
    else:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        if isinstance(reason, TimeoutError):
            reason = "no answer within fetch.timeout_seconds"
    return one_line(str(reason)) or type(error).__name__


class ReadFailed(Exception):
    """The last failure of a read and how many tries it took."""

    def __init__(self, error: Exception, tries: int):
        super().__init__(error)
        self.error, self.tries = error, tries


def backoff(attempt: int) -> float:
    """The wait before retry `attempt` + 1: BACKOFF_SECONDS, doubling each time, at most MAX_BACKOFF_SECONDS."""
    return min(BACKOFF_SECONDS * 2 ** min(attempt, 32), MAX_BACKOFF_SECONDS)


def download_with_retries(location: str, dest: Path, limits: Limits, deadline: float) -> Copied:
    """download(), tried again after a transient failure, up to limits.retries times with exponential backoff,
    while the waits stay within MAX_BACKOFF_TOTAL_SECONDS and the next try would start before `deadline`.

    Raises ReadFailed holding the last failure (one of READ_ERRORS) and the number of tries.
    """
    waited = 0.0
    attempt = 0
    while True:
        try:
            return download(location, dest, limits, deadline)
        except READ_ERRORS as error:
            if isinstance(error, OSError) and error.errno in NO_SPACE:
                raise  # writing the copy failed, not reading the source
            wait = backoff(attempt)
            retry = attempt < limits.retries and is_transient(error)
            if not retry or waited + wait > MAX_BACKOFF_TOTAL_SECONDS or monotonic() + wait >= deadline:
                raise ReadFailed(error, attempt + 1) from error
            print(f"fetch: {location} failed ({describe(error)}); retry {attempt + 1}/{limits.retries} in {wait:g} s")
            sleep(wait)
            waited += wait
            attempt += 1


def read_first(source: FileSource, locations: list[str], dest: Path, limits: Limits) -> tuple[str, Copied]:
    """Copy the first of `locations` that can be read into `dest`; say which one it was."""
    failures = []
    deadline = monotonic() + limits.deadline_seconds  # for the file, wherever it comes from
    for location in locations:
        try:
            return location, download_with_retries(location, dest, limits, deadline)
        except ReadFailed as failed:
            tries = f", {failed.tries} tries" if failed.tries > 1 else ""
            failures.append(f"{location} ({describe(failed.error)}{tries})")
    # Only a pinned file may come from the mirror.
    mirror = f", or set {MIRROR_ENV} to a folder holding {dest.name} (docs/fetch.md)" if source.sha256 else ""
    raise PipelineError(
        f"could not read {dest.name} from {'; nor from '.join(failures)}: check {source.key}.url{mirror}"
    )


def checked_document(file: str, location: str | Path, copied: Copied, pin: str | None, key: str) -> Document:
    """The document stored as data/raw/<file>, once its bytes are the pinned ones and UTF-8 text."""
    if pin and copied.sha256 != pin:
        raise PipelineError(
            f"{location} has sha256 {copied.sha256}, but {key}.sha256 pins {pin}: "
            "fix the source, or update the pin if the new file is intended"
        )
    if copied.bytes == 0:
        raise PipelineError(f"{location} is empty: every document needs text, so fix it or leave it out")
    if copied.utf8_error:
        raise PipelineError(f"{location} is not UTF-8 text ({copied.utf8_error}): convert it to UTF-8")
    return Document(file, copied.bytes, copied.chars, copied.sha256)


def fetch_file(source: FileSource, locations: list[str], root: Path, name: str, limits: Limits) -> Document:
    location, copied = read_first(source, locations, root / name, limits)
    document = checked_document(name, location, copied, source.sha256, source.key)
    print(f"fetch: {copied.bytes} bytes from {location}")
    return document


def folder_files(folder: Path, allow_outside_symlinks: bool = False) -> list[Path]:
    """The corpus files under `folder` at any depth (names ending in one of llmpipe.corpus.CORPUS_SUFFIXES), relative
    to it, in path order; hidden names are skipped, as tokenize does.

    Raises PipelineError for a corpus file name that is not a regular file (a FIFO, socket or device), is not UTF-8, or
    is a link to a file outside `folder` (unless allow_outside_symlinks): copied into data/raw, such a file would
    go on to DVC's cache and the team's remote. A link to a folder is not followed.
    """

    def fail(error: OSError) -> None:
        raise error

    inside = Path(os.path.realpath(folder))
    found = []
    for parent, dirs, files in os.walk(folder, onerror=fail):
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        for name in files:
            if corpus_format(name) is None or name[0] == ".":
                continue
            path = Path(parent, name)
            if not is_utf8(name):
                raise PipelineError(f"{shown(str(path))} has a name that is not UTF-8: rename it")
            target = Path(os.path.realpath(path))  # unlike Path.resolve, no RuntimeError on a loop of links
            if path.is_symlink() and not allow_outside_symlinks and not target.is_relative_to(inside):
                raise PipelineError(
                    f"{path} links to {target}, outside {folder}, so fetch would copy it into data/raw, "
                    "DVC's cache and remote: remove the link, or set fetch.allow_outside_symlinks: true"
                )
            refuse_special(path, path.stat().st_mode)
            found.append(path.relative_to(folder))
    return sorted(found, key=Path.as_posix)


def copy_folder(
    source: FolderSource, root: Path, name: str, limits: Limits, allow_outside_symlinks: bool = False
) -> list[Document]:
    """Copy the folder's corpus files to root/<name>/ (see folder_files for which, and what is refused)."""
    folder = Path(source.path)
    try:
        is_folder = folder.is_dir()
    except OSError:  # a name too long for the filesystem, say
        is_folder = False
    if not is_folder:
        raise PipelineError(
            f"{source.key}.path {shown(source.path)} is not a folder: point it at a folder of corpus files"
        )
    documents = []
    try:
        for relative in folder_files(folder, allow_outside_symlinks):
            stored = Path(name, relative)
            (root / stored).parent.mkdir(parents=True, exist_ok=True)
            copied = download(folder / relative, root / stored, limits)
            documents.append(checked_document(stored.as_posix(), folder / relative, copied, None, source.key))
    except OSError as error:
        if error.errno in NO_SPACE:
            raise  # writing the copy failed, not reading the folder
        raise PipelineError(f"could not read {source.path} ({describe(error)}): check {source.key}.path") from None
    if not documents:
        suffixes = ", ".join(CORPUS_SUFFIXES)
        raise PipelineError(
            f"{source.key}.path {shown(source.path)} holds no corpus file ({suffixes}): add some, or remove the entry"
        )
    print(f"fetch: {len(documents)} files, {sum(d.bytes for d in documents)} bytes from {folder}")
    return documents


def fetch(
    sources: list[Source],
    out_dir: Path,
    limits: Limits,
    mirror: str | None = None,
    *,
    allow_outside_symlinks: bool = False,
) -> list[Document]:
    """Store every source under out_dir, each document checked, and return them in path order.

    On any error out_dir is left as it was."""
    names = stored_names(sources, out_dir)
    documents = []
    with output_dir(out_dir) as tmp:
        for source, name in zip(sources, names, strict=True):
            if isinstance(source, FolderSource):
                documents += copy_folder(source, tmp, name, limits, allow_outside_symlinks)
            else:
                documents.append(fetch_file(source, candidates(source, name, mirror), tmp, name, limits))
    return sorted(documents, key=lambda document: document.file)


def corpus_metrics(documents: list[Document]) -> dict[str, Any]:
    """metrics/fetch.json. One document: its file, bytes, chars and sha256. Several: how many, their total bytes and
    chars, and as sha256 that of their `sha256sum` manifest (one "<sha256>  <file>" line each, in path order),
    which pins the whole corpus in one figure."""
    if len(documents) == 1:
        return asdict(documents[0])
    manifest = "".join(f"{document.sha256}  {document.file}\n" for document in documents)
    return {
        "num_documents": len(documents),
        "bytes": sum(document.bytes for document in documents),
        "chars": sum(document.chars for document in documents),
        "sha256": hashlib.sha256(manifest.encode("utf-8")).hexdigest(),
    }
