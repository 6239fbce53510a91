"""BPE tokenization with tiktoken (the book's section 2.5), streamed so corpora of any size fit in flat memory.

Each document is read in chunks cut only where tokenization is unaffected (`safe_cut`), the chunks are
encoded on a thread pool, and their ids come back in order with the end-of-text token between documents.
Text that spells "<|endoftext|>" is ordinary text unless literal_endoftext is "token".
"""

from __future__ import annotations

import base64
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from llmpipe.corpus import open_text
from llmpipe.errors import PipelineError, one_line, shown
from llmpipe.formats import token_dtype

END_OF_TEXT = "<|endoftext|>"
MAX_RANKS_BYTES = 64 << 20  # the largest of tiktoken's own, o200k_base, is 3.6 MB
CHUNK_CHARS = 1 << 20  # text per encode call: big enough to keep tiktoken busy, small enough to stay flat
NUM_THREADS = os.cpu_count() or 1
# tiktoken downloads a named encoding's files on a cache miss with no timeout of its own: a network that accepts
# the connection and never answers would hold the stage forever. Generous for its largest files (a few MB).
DOWNLOAD_SECONDS = 120
MAX_RANK = (1 << 32) - 2  # tiktoken's ids are 32-bit, and the end-of-text token takes the rank after the last
# dvc.yaml lists this folder as a dependency of tokenize: a ranks file in it is tracked by DVC, so an edit reruns
# tokenize. Under DVC (which sets DVC_STAGE) a ranks file elsewhere is refused: an edit to it would go unseen.
ENCODINGS_DIR = Path("encodings")
# Past this share of NUL characters a document is not UTF-8 text but UTF-16 or UTF-32 (ASCII as UTF-16 is half
# NUL), or binary; the odd NUL in prose stays text.
MAX_NUL_SHARE = 1 / 3


def load_encoding(encoding: str):
    """A tiktoken Encoding from a registered name ("gpt2") or the path of a .tiktoken ranks file."""
    import tiktoken

    if encoding.endswith(".tiktoken") or "/" in encoding:
        return _encoding_from_file(Path(encoding))
    if encoding not in tiktoken.list_encoding_names():
        raise PipelineError(
            f"tokenize.encoding {shown(encoding)} is unknown: use one of {', '.join(tiktoken.list_encoding_names())} "
            "or the path of a .tiktoken file"
        )
    try:
        return _within(DOWNLOAD_SECONDS, tiktoken.get_encoding, encoding)
    except Exception as error:  # tiktoken downloads on a cache miss and raises whatever the network raised
        raise PipelineError(
            f"could not load encoding {shown(encoding)} ({type(error).__name__}: {one_line(str(error))}): "
            "set TIKTOKEN_CACHE_DIR to a folder holding tiktoken's cached files (docs/pipeline.md, offline use)"
        ) from None


def _within(seconds: float, function: Callable, *args):
    """function(*args), run on a daemon thread; TimeoutError if it has not returned within `seconds`.

    The thread is then left behind, to end with the process (tiktoken's requests.get has no timeout to pass).
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = function(*args)
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=target, name="tiktoken-load", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"tiktoken's download of its files did not finish within {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def read_ranks(path: Path) -> dict[bytes, int]:
    """A .tiktoken ranks file: one `base64-token rank` pair a line, checked to be a BPE tiktoken can use.

    Read here rather than with tiktoken's loader, which caches files by path and would keep serving
    the old ranks after the file is edited. Raises PipelineError naming the file and the problem: a line that
    is not `base64 rank`, a token or rank given twice, a rank outside [0, MAX_RANK], or a single byte that is
    not a token (tiktoken would panic on the first text holding it).
    """
    try:
        if path.exists() and (not path.is_file() or path.stat().st_size > MAX_RANKS_BYTES):
            raise PipelineError(
                f"tokenize.encoding: {path} is not a ranks file (a device, a folder, or over "
                f"{MAX_RANKS_BYTES >> 20} MB): give the path of a .tiktoken file"
            )
        lines = path.read_bytes().splitlines()
    except OSError as error:  # a name too long, a folder we may not read, ...
        raise PipelineError(f"tokenize.encoding: cannot read {path} ({error.strerror}): fix the path") from None
    ranks: dict[bytes, int] = {}
    seen: set[int] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            token, rank = base64.b64decode(token, validate=True), int(rank)
        except ValueError:
            raise PipelineError(
                f"tokenize.encoding: {path} is not a .tiktoken ranks file (line {number} is not `base64 rank`)"
            ) from None
        problems = {
            "repeats the token of an earlier line": token in ranks,
            "repeats the rank of an earlier line": rank in seen,
            f"has rank {rank}, outside 0 to {MAX_RANK:,}": not 0 <= rank <= MAX_RANK,
        }
        problem = next((problem for problem, found in problems.items() if found), None)
        if problem:
            raise PipelineError(f"tokenize.encoding: {path} is not a valid BPE (line {number} {problem}): fix it")
        ranks[token] = rank
        seen.add(rank)
    if not ranks:
        raise PipelineError(f"tokenize.encoding: {path} holds no ranks")
    missing = [byte for byte in range(256) if bytes([byte]) not in ranks]
    if missing:
        raise PipelineError(
            f"tokenize.encoding: {path} is not a valid BPE: {len(missing)} of the 256 single bytes are not tokens "
            f"(the first: 0x{missing[0]:02x}), and every byte must be one: add them"
        )
    return ranks


def _encoding_from_file(path: Path):
    """A GPT-2-style encoding (GPT-2's split pattern, end-of-text after the last rank) from a ranks file.

    Under DVC (DVC_STAGE set) the file must be in ENCODINGS_DIR, which DVC tracks; raises PipelineError if not.
    """
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str

    if os.environ.get("DVC_STAGE") and not Path(os.path.abspath(path)).is_relative_to(ENCODINGS_DIR.absolute()):
        raise PipelineError(
            f"tokenize.encoding {path} is outside {ENCODINGS_DIR}/, the folder dvc.yaml lists as tokenize's "
            f"dependency, so DVC would not see an edit to it and would keep stale tokens: move it into "
            f"{ENCODINGS_DIR}/ and set tokenize.encoding to its new path"
        )
    ranks = read_ranks(path)
    return tiktoken.Encoding(
        name=path.stem,
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={END_OF_TEXT: max(ranks.values()) + 1},
    )


def safe_cut(text: str, limit: int) -> int:
    """Where to cut `text` at or before `limit` without changing its tokens.

    GPT-2's pre-tokenizer never joins a non-space character to the white space after it (a piece is a
    run of letters, digits or punctuation with at most one space in front, or a run of white space), so
    a cut just before white space that follows a non-space character leaves every piece, and so every
    token, as it was. Only text with no such place within `limit` characters (one run of that length
    with no white space) is cut at `limit`, where its tokens may differ from a one-shot encode.
    """
    if len(text) <= limit:
        return len(text)
    for separator in ("\n", " "):
        cut = text.rfind(separator, 1, limit + 1)
        while cut > 0:
            if not text[cut - 1].isspace():
                return cut
            cut = text.rfind(separator, 1, cut)
    return limit


def read_chunks(path: Path, chunk_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """The text of one file in pieces of at most `chunk_chars` characters, cut where tokens allow.

    Read as the book's open(path, encoding="utf-8") reads it (line ends become "\\n"), except that a
    leading byte-order mark is dropped; a .gz or .zst file is decompressed as it is read (llmpipe.corpus).
    At least one piece, possibly empty, so every file is a document. Raises PipelineError for a document that
    is mostly NUL (over MAX_NUL_SHARE of the characters read so far): UTF-16 without a byte-order mark, say.
    """
    buffer = ""
    chars = nuls = 0
    with open_text(path) as file:
        while block := file.read(chunk_chars):
            chars, nuls = chars + len(block), nuls + block.count("\0")
            if nuls > MAX_NUL_SHARE * chars:
                raise PipelineError(
                    f"{path} is mostly NUL characters ({nuls:,} of its first {chars:,}), as UTF-16 text is when "
                    "read as UTF-8: convert it to UTF-8 (e.g. `iconv -f UTF-16LE -t UTF-8`), or remove it"
                )
            buffer += block
            while len(buffer) > chunk_chars:
                cut = safe_cut(buffer, chunk_chars)
                yield buffer[:cut]
                buffer = buffer[cut:]
    yield buffer


def ordered_map(function: Callable, items: Iterable, num_threads: int) -> Iterator:
    """map() on a thread pool, results in order, at most 2 x num_threads items in flight.

    tiktoken releases the GIL while it encodes, so the threads use every core while memory stays flat.
    """
    with ThreadPoolExecutor(num_threads) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= 2 * num_threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def tokenize_documents(
    documents: Iterable[Iterable[str]],
    encoding,
    sink: Callable[[np.ndarray], object],
    literal_endoftext: str = "text",
    *,
    num_threads: int = NUM_THREADS,
    separate_first: bool = False,
) -> list[int]:
    """Feed the ids of each document (an iterable of text pieces) to `sink`, end-of-text between documents
    (and before the first one too with separate_first, for a shard that follows another).

    Returns where each document starts. "<|endoftext|>" written in the text is ordinary text unless
    literal_endoftext is "token".
    """
    dtype = token_dtype(encoding.n_vocab)
    allowed = {END_OF_TEXT} if literal_endoftext == "token" else set()
    end_of_text = np.array([encoding.eot_token], dtype=dtype)

    def encode(item: tuple[int, str]) -> tuple[int, np.ndarray]:
        index, text = item
        ids = encoding.encode_to_numpy(text, allowed_special=allowed, disallowed_special=())
        return index, ids.astype(dtype)

    pieces = ((index, piece) for index, document in enumerate(documents) for piece in document)
    starts: list[int] = []
    position = 0
    for index, ids in ordered_map(encode, pieces, num_threads):
        if index == len(starts):  # the first piece of the next document
            if index or separate_first:
                sink(end_of_text)
                position += 1
            starts.append(position)
        sink(ids)
        position += len(ids)
    return starts


def tokenize(texts: Iterable[str], encoding, *, literal_endoftext: str = "text") -> tuple[np.ndarray, list[int]]:
    """Encode texts held in memory: the flat ids, end-of-text between texts, and where each text starts."""
    arrays: list[np.ndarray] = []
    starts = tokenize_documents(
        ([text] for text in texts), encoding, arrays.append, literal_endoftext=literal_endoftext
    )
    return np.concatenate(arrays) if arrays else np.empty(0, token_dtype(encoding.n_vocab)), starts


def corpus_files(raw_dir: Path) -> list[Path]:
    """Every file under raw_dir, in order of relative path; names starting with "." are not corpus."""
    files = sorted(
        (
            path
            for path in (raw_dir.rglob("*") if raw_dir.is_dir() else [])
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(raw_dir).parts)
        ),
        key=lambda path: path.relative_to(raw_dir).as_posix(),  # the order of `LC_ALL=C sort`, as fetch lists them
    )
    if not files:
        raise PipelineError(f"{raw_dir} holds no corpus file: run `dvc repro fetch`")
    return files
