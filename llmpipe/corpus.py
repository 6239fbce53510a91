"""Corpus files as documents: plain text, JSON lines and Parquet, read as streams with bounded memory.

Formats, by the end of the file name (case ignored):
- .txt: the whole file is one document, UTF-8, which open_text reads with universal newlines (CRLF becomes LF) and a
  leading byte-order mark dropped, as the book's open(path, encoding="utf-8") reads it.
- .jsonl or .json: JSON lines, one document a line: each non-empty line is a JSON object whose text field (param
  tokenize.text_field, "text" by default) holds a string, returned as it is (no newline translation).
- .parquet: one document a row: the string column named by the text field, decoded a bounded batch at a time.
.txt, .jsonl and .json may be followed by .gz (gzip) or .zst (Zstandard), decompressed while streaming. Parquet
compresses its pages itself, so it is accepted plain only: .parquet.gz and .parquet.zst are not corpus files.

iter_records yields the documents of a file in file order: lines top to bottom, rows in row-group order.
Every problem with a file's content is a PipelineError whose one line names the file and the place in it (line, row
or row group) and the fix.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, TextIO

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from llmpipe.errors import PipelineError, one_line, shown

StrPath = str | os.PathLike

_FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
_COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}
_SUFFIXES = {
    suffix + compressed: (kind, _COMPRESSIONS.get(compressed))
    for suffix, kind in _FORMATS.items()
    for compressed in ("", *_COMPRESSIONS)
    if kind != "parquet" or not compressed
}
CORPUS_SUFFIXES = tuple(_SUFFIXES)  # every file-name ending that corpus_format recognises
TEXT_FIELD_PARAM = "tokenize.text_field"
BATCH_ROWS = 1024  # Parquet rows decoded at a time: a few MB of typical web documents
READ_SIZE = 1 << 16  # decompressed bytes handed on at a time
ZSTD_INPUT = 1 << 10  # zstd expands a block up to ~32,000-fold: a small input slice bounds each piece (32 MB)
PARQUET_BUFFER = 1 << 20  # column chunks are read through a buffer this big rather than whole
MAX_REASON = 200  # characters of a library's error message quoted in ours
_DECOMPRESSION_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error, zstandard.ZstdError, OSError)
_PARQUET_ERRORS = (pa.ArrowException, OSError)
_JSON_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", (int, float): "a number"}


def _error(message: str) -> PipelineError:
    """A PipelineError of `message` made one line (a file name or quoted excerpt may hold line breaks)."""
    return PipelineError(one_line(message))


def _reason(error: BaseException) -> str:
    """A library's exception as ours quote it: its type and text, cut short."""
    reason = one_line(f"{type(error).__name__}: {error}")
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."


def corpus_format(path: StrPath) -> tuple[str, str | None] | None:
    """The format ("txt", "jsonl" or "parquet") and compression ("gzip", "zstd" or None) named by `path`'s ending.

    Takes a path, of which only the name is looked at (case ignored); returns None when the name ends in none of
    CORPUS_SUFFIXES.
    """
    name = Path(path).name.lower()
    return next((kind for suffix, kind in _SUFFIXES.items() if name.endswith(suffix)), None)


class _Decompressed(io.RawIOBase):
    """A raw stream over the pieces a decompressor yields; its errors become PipelineErrors naming the file."""

    def __init__(self, path: StrPath, file: BinaryIO, pieces: Iterator[bytes]):
        self._path = path
        self._file = file
        self._pieces = pieces
        self._piece = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            while not self._piece:
                piece = next(self._pieces, None)
                if piece is None:
                    return 0
                self._piece = memoryview(piece)
        except _DECOMPRESSION_ERRORS as error:
            raise _error(
                f"{self._path} is truncated or corrupt ({_reason(error)}): fetch or compress it again"
            ) from None
        size = min(len(buffer), len(self._piece))
        buffer[:size] = self._piece[:size]
        self._piece = self._piece[size:]
        return size

    def close(self) -> None:
        self._pieces.close()
        self._file.close()
        super().close()


def _gzip_pieces(file: BinaryIO) -> Iterator[bytes]:
    """The decompressed bytes of a gzip file, every member, READ_SIZE at a time."""
    with gzip.GzipFile(fileobj=file) as stream:
        while piece := stream.read(READ_SIZE):
            yield piece


def _zstd_pieces(file: BinaryIO) -> Iterator[bytes]:
    """The decompressed bytes of a zstd file, every frame; raises EOFError if the file ends inside a frame.

    zstandard's stream_reader ends quietly at a frame cut short, so each frame is decoded by a decompressobj of its
    own, whose eof tells a finished frame from a cut one.
    """
    decompressor = zstandard.ZstdDecompressor()
    frame, inside, pending = decompressor.decompressobj(), False, b""
    while data := pending or file.read(ZSTD_INPUT):
        yield frame.decompress(data)
        inside, pending = not frame.eof, b""
        if frame.eof:
            frame, pending = decompressor.decompressobj(), frame.unused_data
    if inside:
        raise EOFError("the file ends inside a zstd frame")


_DECOMPRESSORS = {"gzip": _gzip_pieces, "zstd": _zstd_pieces}


def open_binary(path: StrPath) -> BinaryIO:
    """`path` as a buffered binary stream, decompressed while streaming when its name ends in .gz or .zst.

    Takes any path; returns a stream to close (use `with`); memory stays bounded whatever the file's size.
    Raises PipelineError naming the file when it cannot be opened and, from the reads, when it is truncated or corrupt.
    """
    try:
        file = open(path, "rb")
    except OSError as error:
        raise _error(f"cannot open {path} ({error.strerror}): check that it is a readable file") from None
    compression = _COMPRESSIONS.get(Path(path).suffix.lower())
    if compression is None:
        return file
    return io.BufferedReader(_Decompressed(path, file, _DECOMPRESSORS[compression](file)), READ_SIZE)


class _Text(io.TextIOWrapper):
    """A TextIOWrapper whose decoding errors are PipelineErrors naming the file and the line."""

    def __init__(self, path: StrPath, buffer: BinaryIO):
        super().__init__(buffer, encoding="utf-8-sig", newline=None)
        self._path = path

    def read(self, size: int | None = -1) -> str:
        try:
            return super().read(size)
        except UnicodeDecodeError as error:
            raise self._not_utf8(error) from None

    def readline(self, size: int = -1) -> str:
        try:
            return super().readline(size)
        except UnicodeDecodeError as error:
            raise self._not_utf8(error) from None

    def __next__(self) -> str:
        try:
            return super().__next__()
        except UnicodeDecodeError as error:
            raise self._not_utf8(error) from None

    def _not_utf8(self, error: UnicodeDecodeError) -> PipelineError:
        line = _first_bad_utf8_line(self._path)
        return _error(f"{self._path} line {line} is not UTF-8 ({error.reason}): convert the file to UTF-8")


def _first_bad_utf8_line(path: StrPath) -> int:
    """The line of `path` where UTF-8 decoding first fails, found by reading it again (only on that error's path)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with open_binary(path) as stream:
        while block := stream.read(READ_SIZE):
            held = len(decoder.getstate()[0])  # bytes of a character begun in the last block: no line break among them
            try:
                decoder.decode(block)
            except UnicodeDecodeError as error:
                return line + block[: max(error.start - held, 0)].count(b"\n")
            line += block.count(b"\n")
    return line  # the file ends inside a character


def open_text(path: StrPath) -> TextIO:
    """A .txt corpus file (plain, .gz or .zst) as a text stream, to read in chunks; close it (use `with`).

    Decodes UTF-8 with universal newlines (CRLF and CR become LF) and drops a leading byte-order mark, as the book's
    open(path, encoding="utf-8") reads the file. Raises PipelineError naming the file: from here when it cannot be
    opened, from the reads when it is truncated or corrupt, or not UTF-8 (naming the line).
    """
    return _Text(path, open_binary(path))


def iter_records(path: StrPath, text_field: str = "text", batch_rows: int = BATCH_ROWS) -> Iterator[str]:
    """The documents of a corpus file, in file order.

    Takes the file (its name ending in one of CORPUS_SUFFIXES), the field or column that holds the text in JSON lines
    and Parquet, and how many Parquet rows to decode at a time. A .txt file is one document, held whole: to stream
    it, read open_text in chunks. Raises PipelineError, naming the file: here for a name of no corpus format, and while
    iterating for content that cannot be read (naming the line, row or row group).
    """
    kind = corpus_format(path)
    if kind is None:
        raise _error(f"{path} is of no corpus format: name it with one of {', '.join(CORPUS_SUFFIXES)}")
    if kind[0] == "parquet":
        return _parquet_records(path, text_field, batch_rows)
    if kind[0] == "jsonl":
        return _json_records(path, text_field)
    return _text_records(path)


def _text_records(path: StrPath) -> Iterator[str]:
    with open_text(path) as text:
        yield text.read()


def _json_records(path: StrPath, text_field: str) -> Iterator[str]:
    with open_binary(path) as stream:
        for number, line in enumerate(stream, 1):
            if number == 1:
                line = line.removeprefix(codecs.BOM_UTF8)
            if line.strip():
                yield _json_text(f"{path} line {number}", line, text_field)


def _json_kind(value: object) -> str:
    """A JSON value as a message names it: its type and, unless it is null, a short quote of it."""
    if value is None:
        return "null"
    kind = next(name for types, name in _JSON_KINDS.items() if isinstance(value, types))
    return f"{kind} {shown(value)}"


def _json_text(place: str, line: bytes, text_field: str) -> str:
    """The text field of one JSON line; raises PipelineError naming `place` ("<file> line <n>")."""
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise _error(
            f"{place} is not UTF-8 ({error.reason} at byte {error.start + 1}): convert the file to UTF-8"
        ) from None
    except json.JSONDecodeError as error:
        raise _error(f"{place} is not JSON ({error.msg} at column {error.colno}): fix or remove it") from None
    except RecursionError:
        raise _error(f"{place} is JSON nested too deeply to read: fix or remove it") from None
    if not isinstance(record, dict):
        raise _error(f"{place} is {_json_kind(record)}, not an object: make each line an object holding the text")
    if text_field not in record:
        raise _error(
            f"{place} has no {shown(text_field)} field (it has {shown(list(record))}): "
            f"set {TEXT_FIELD_PARAM} to the field that holds the text"
        )
    value = record[text_field]
    if not isinstance(value, str):
        raise _error(
            f"{place} field {shown(text_field)} is {_json_kind(value)}, not a string: "
            f"make it a string or set {TEXT_FIELD_PARAM} to the field that holds the text"
        )
    return value


def _parquet_records(path: StrPath, text_field: str, batch_rows: int) -> Iterator[str]:
    try:
        parquet = pq.ParquetFile(path, buffer_size=PARQUET_BUFFER, pre_buffer=False, page_checksum_verification=True)
    except _PARQUET_ERRORS as error:
        raise _error(f"{path} is not a readable Parquet file ({_reason(error)}): fetch or write it again") from None
    with parquet:
        _check_text_column(path, parquet.schema_arrow, text_field)
        first_row = 0
        for group in range(parquet.num_row_groups):
            yield from _row_group_texts(path, parquet, group, first_row, text_field, batch_rows)
            first_row += parquet.metadata.row_group(group).num_rows


def _check_text_column(path: StrPath, schema: pa.Schema, text_field: str) -> None:
    """Raise PipelineError unless `schema` has exactly one column named `text_field`, and of strings."""
    columns = schema.get_all_field_indices(text_field)
    if len(columns) != 1:
        raise _error(
            f"{path} has {'no' if not columns else len(columns)} columns named {shown(text_field)} "
            f"(it has {shown(schema.names)}): set {TEXT_FIELD_PARAM} to the column that holds the text"
        )
    kind = schema.field(columns[0]).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise _error(
            f"{path} column {shown(text_field)} holds {kind}, not strings: "
            f"set {TEXT_FIELD_PARAM} to the column that holds the text"
        )


def _row_group_texts(
    path: StrPath, parquet: pq.ParquetFile, group: int, first_row: int, text_field: str, batch_rows: int
) -> Iterator[str]:
    """The texts of one row group, batch_rows decoded at a time; rows are numbered in the file from first_row."""
    where = f"row group {group + 1} of {parquet.num_row_groups}"
    batches = parquet.iter_batches(batch_size=batch_rows, row_groups=[group], columns=[text_field])
    while True:
        try:
            batch = next(batches, None)
        except _PARQUET_ERRORS as error:
            raise _error(f"{path} {where} is corrupt ({_reason(error)}): fetch or write the file again") from None
        if batch is None:
            return
        yield from _batch_texts(f"{path} {where}", batch.column(0), first_row, text_field)
        first_row += batch.num_rows


def _batch_texts(place: str, column: pa.Array, first_row: int, text_field: str) -> list[str]:
    """The strings of one batch; raises PipelineError naming the row (in the file, from 1) of a null or bad one."""
    try:
        texts = column.to_pylist()
    except UnicodeDecodeError as error:
        row = next(row for row, value in enumerate(column.cast(pa.binary()).to_pylist()) if not _is_utf8(value))
        raise _error(
            f"{place}: row {first_row + row + 1} is not UTF-8 ({error.reason}): write the column as UTF-8"
        ) from None
    if column.null_count:
        row = texts.index(None)
        raise _error(
            f"{place}: row {first_row + row + 1} is null in column {shown(text_field)}: drop the row or give it text"
        )
    return texts


def _is_utf8(value: bytes | None) -> bool:
    try:
        (value or b"").decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
