"""Benchmark corpora: tiny Shakespeare (../shared/corpus) repeated to a size, made once under .bench/ and kept.

A mixed corpus holds a third of its text in each format the tokenize stage reads, in files of at most FILE_MB of text:
    txt/part-NNN.txt              plain text, each file one document
    jsonl/part-NNN.jsonl.zst      JSON lines, Zstandard-compressed, one record of about RECORD_CHARS characters a line,
                                  the text in field "text"
    parquet/part-NNN.parquet      column "text", the same records, ROW_GROUP_ROWS rows a row group (Snappy)
Sizes count the text (the characters of the documents, all ASCII), not the bytes on disk: .zst and .parquet files
are compressed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
SHAKESPEARE = SHARED / "corpus" / "tinyshakespeare.txt"
VERDICT = SHARED / "corpus" / "the-verdict.txt"
WORK = ROOT / ".bench"
MB = 10**6
FILE_MB = 250
RECORD_CHARS = 4000
ROW_GROUP_ROWS = 8192  # about 33 MB of text a row group


def records() -> list[str]:
    """Tiny Shakespeare cut at line ends into documents of about RECORD_CHARS characters."""
    text = SHAKESPEARE.read_text(encoding="utf-8")
    documents, start = [], 0
    while start < len(text):
        end = text.find("\n", start + RECORD_CHARS)
        end = len(text) if end < 0 else end + 1
        documents.append(text[start:end])
        start = end
    return documents


def repeated_records(size: int) -> Iterator[str]:
    """Records, cycling through tiny Shakespeare, until they hold at least `size` characters."""
    documents = records()
    written = 0
    while written < size:
        for document in documents:
            yield document
            written += len(document)
            if written >= size:
                return


def file_sizes(total: int) -> list[int]:
    """`total` characters as files of at most FILE_MB, all about the same size."""
    count = max(1, -(-total // (FILE_MB * MB)))
    return [total // count + (k < total % count) for k in range(count)]


def write_txt(path: Path, size: int) -> None:
    text = SHAKESPEARE.read_bytes()
    repeated = text * (size // len(text) + 1)
    cut = repeated.rfind(b"\n", 0, size) + 1 or size  # whole lines
    path.write_bytes(repeated[:cut])


def write_jsonl_zst(path: Path, size: int) -> None:
    import zstandard

    with open(path, "wb") as file, zstandard.ZstdCompressor(level=3).stream_writer(file) as writer:
        for document in repeated_records(size):
            writer.write(json.dumps({"text": document}).encode("utf-8") + b"\n")


def write_parquet(path: Path, size: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("text", pa.string())])
    with pq.ParquetWriter(path, schema, compression="snappy") as writer:
        group: list[str] = []
        for document in repeated_records(size):
            group.append(document)
            if len(group) == ROW_GROUP_ROWS:
                writer.write_table(pa.table({"text": group}, schema=schema), row_group_size=ROW_GROUP_ROWS)
                group = []
        if group:
            writer.write_table(pa.table({"text": group}, schema=schema), row_group_size=ROW_GROUP_ROWS)


WRITERS = {"txt": (".txt", write_txt), "jsonl": (".jsonl.zst", write_jsonl_zst), "parquet": (".parquet", write_parquet)}


def mixed_corpus(size_mb: int, formats: tuple[str, ...] = ("txt", "jsonl", "parquet")) -> Path:
    """A folder of `size_mb` MB of text, an equal share in each of `formats` (one subfolder each); made once."""
    folder = WORK / f"corpus-{'-'.join(formats)}-{size_mb}mb"
    if folder.is_dir():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for kind in formats:
        suffix, write = WRITERS[kind]
        (tmp / kind).mkdir(parents=True)
        for k, size in enumerate(file_sizes(size_mb * MB // len(formats))):
            write(tmp / kind / f"part-{k:03d}{suffix}", size)
    tmp.rename(folder)
    return folder


def corpus_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def disk_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in corpus_files(folder))
