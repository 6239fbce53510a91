"""llmpipe.corpus: corpus files of every format read back as documents, and every way one can be broken."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from llmpipe.corpus import CORPUS_SUFFIXES, corpus_format, iter_records, open_binary, open_text
from llmpipe.errors import PipelineError

DOCUMENTS = ["first document", "", "with\na line break\r\nand CRLF kept as is", "ünïcødé ✓ 🦙", '"quoted" {json}']


def compress(path: Path, data: bytes) -> bytes:
    """`data` compressed as `path`'s name says."""
    if path.name.endswith(".gz"):
        return gzip.compress(data)
    if path.name.endswith(".zst"):
        return zstandard.ZstdCompressor().compress(data)
    return data


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(compress(path, data))
    return path


def write_jsonl(path: Path, records: list) -> Path:
    return write(path, "".join(json.dumps(record) + "\n" for record in records).encode())


def write_parquet(path: Path, columns: dict, row_group_size: int = 1000) -> Path:
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def read_error(path: Path, **options) -> str:
    """The message of the PipelineError that reading all of `path` raises, checked to be one line naming the file."""
    with pytest.raises(PipelineError) as caught:
        list(iter_records(path, **options))
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    return message


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.txt", ("txt", None)),
        ("a.txt.gz", ("txt", "gzip")),
        ("a.b.txt.zst", ("txt", "zstd")),
        ("a.jsonl", ("jsonl", None)),
        ("a.json", ("jsonl", None)),
        ("A.JSONL.ZST", ("jsonl", "zstd")),
        ("a.json.gz", ("jsonl", "gzip")),
        ("a.parquet", ("parquet", None)),
        ("a.parquet.gz", None),
        ("a.parquet.zst", None),
        ("a.gz", None),
        ("a.csv", None),
        ("README", None),
    ],
)
def test_corpus_format(name, expected):
    assert corpus_format(Path("some/dir") / name) == expected


def test_every_suffix_has_a_format():
    assert all(corpus_format(f"x{suffix}") for suffix in CORPUS_SUFFIXES)


@pytest.mark.parametrize("name", ["c.jsonl", "c.jsonl.gz", "c.jsonl.zst", "c.json", "c.json.zst"])
def test_json_lines_come_back_in_order(tmp_path, name):
    path = write_jsonl(tmp_path / name, [{"id": i, "text": text} for i, text in enumerate(DOCUMENTS)])
    assert list(iter_records(path)) == DOCUMENTS


def test_json_lines_skip_blank_lines_and_take_crlf_and_a_bom(tmp_path):
    lines = ['{"text": "a"}', "", "   ", '{"text": "b"}']
    path = write(tmp_path / "c.jsonl", ("\ufeff" + "\r\n".join(lines) + "\r\n").encode())
    assert list(iter_records(path)) == ["a", "b"]


def test_text_field(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"body": "x", "text": 1}, {"body": "y"}])
    assert list(iter_records(path, text_field="body")) == ["x", "y"]


def test_concatenated_gzip_members_and_zstd_frames(tmp_path):
    first, second = b'{"text": "one"}\n', b'{"text": "two"}\n'
    for name in ("c.jsonl.gz", "c.jsonl.zst"):
        path = tmp_path / name
        path.write_bytes(compress(path, first) + compress(path, second))
        assert list(iter_records(path)) == ["one", "two"]


def test_parquet_row_groups_come_back_in_order(tmp_path):
    texts = [f"document {i} " + "words " * (i % 7) for i in range(2500)]
    path = write_parquet(tmp_path / "c.parquet", {"id": list(range(2500)), "text": texts})
    assert pq.ParquetFile(path).num_row_groups == 3
    assert list(iter_records(path, batch_rows=300)) == texts


def test_parquet_text_field_and_large_strings(tmp_path):
    body = pa.array(["x", "y"], type=pa.large_string())
    path = write_parquet(tmp_path / "c.parquet", {"body": body})
    assert list(iter_records(path, text_field="body")) == ["x", "y"]


@pytest.mark.parametrize("name", ["c.txt", "c.txt.gz", "c.txt.zst"])
def test_text_reads_as_python_reads_it(tmp_path, name):
    raw = "\ufeffline one\r\nline two\rline three\nünïcødé\r\n".encode()
    path = write(tmp_path / name, raw)
    plain = write(tmp_path / "plain.txt", raw)
    with open(plain, encoding="utf-8-sig") as file:
        expected = file.read()
    assert expected == "line one\nline two\nline three\nünïcødé\n"
    with open_text(path) as text:
        assert text.read(5) + text.read() == expected
    with open_text(path) as text:
        assert list(text) == expected.splitlines(keepends=True)
    assert list(iter_records(path)) == [expected]


def test_empty_files(tmp_path):
    for name in ("e.jsonl", "e.jsonl.gz", "e.jsonl.zst"):
        assert list(iter_records(write(tmp_path / name, b""))) == []
    assert list(iter_records(write(tmp_path / "e.txt.zst", b""))) == [""]


def test_open_binary_streams_decompressed_bytes(tmp_path):
    data = bytes(range(256)) * 1000
    for name in ("b.bin", "b.bin.gz", "b.bin.zst"):
        with open_binary(write(tmp_path / name, data)) as stream:
            assert stream.read(10) + stream.read() == data


def test_line_not_json(tmp_path):
    path = write(tmp_path / "x.jsonl", b'{"text": "a"}\n{"text": "b"}\n{"text": oops}\n')
    message = read_error(path)
    assert "line 3 is not JSON" in message and "fix or remove it" in message


def test_line_not_an_object(tmp_path):
    assert "line 2 is an array [1, 2], not an object" in read_error(
        write_jsonl(tmp_path / "x.jsonl", [{"text": "a"}, [1, 2]])
    )


def test_line_without_the_field(tmp_path):
    message = read_error(write_jsonl(tmp_path / "x.jsonl", [{"text": "a"}, {"text": "b"}, {"body": "c"}]))
    assert "line 3 has no 'text' field (it has ['body'])" in message
    assert "set tokenize.text_field to the field that holds the text" in message


def test_field_not_a_string(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl.zst", [{"text": "a"}, {"text": 42}])
    assert "line 2 field 'text' is a number 42, not a string" in read_error(path)
    path = write_jsonl(tmp_path / "y.jsonl", [{"text": None}])
    assert "line 1 field 'text' is null, not a string" in read_error(path)


def test_huge_values_are_quoted_short(tmp_path):
    record = {f"field{i}": "v" * 10_000 for i in range(1000)}
    assert len(read_error(write_jsonl(tmp_path / "x.jsonl", [record]))) < 300
    assert len(read_error(write_jsonl(tmp_path / "y.jsonl", [{"text": list(range(100_000))}]))) < 300


def test_json_nested_too_deeply(tmp_path):
    path = write(tmp_path / "x.jsonl", b"[" * 100_000 + b"\n")
    assert "line 1 is JSON nested too deeply" in read_error(path)


def test_json_line_not_utf8(tmp_path):
    path = write(tmp_path / "x.jsonl.gz", b'{"text": "a"}\n{"text": "\xff"}\n')
    assert "line 2 is not UTF-8" in read_error(path)


@pytest.mark.parametrize("name", ["x.jsonl.gz", "x.jsonl.zst", "x.txt.gz", "x.txt.zst"])
@pytest.mark.parametrize("keep", [0.5, -1])
def test_truncated_compressed_file(tmp_path, name, keep):
    """Cut in the middle or by its last byte, a compressed file is an error, not a shorter corpus."""
    path = write_jsonl(tmp_path / name, [{"text": f"record {i} " * 20} for i in range(2000)])
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)] if keep > 0 else data[:keep])
    assert "is truncated or corrupt" in read_error(path)


@pytest.mark.parametrize("name", ["x.jsonl.gz", "x.jsonl.zst"])
def test_corrupt_compressed_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"this was never compressed\n" * 100)
    assert "is truncated or corrupt" in read_error(path)


def test_gzip_checksum_mismatch(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl.gz", [{"text": "a"}])
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # the CRC-32 of the content
    path.write_bytes(bytes(data))
    assert "is truncated or corrupt" in read_error(path)


def test_text_not_utf8_names_the_line(tmp_path):
    # Two-byte characters, so read blocks end inside characters before the bad byte on line 3001.
    path = write(tmp_path / "x.txt.zst", ("x" + "é" * 30 + "\n").encode() * 3000 + b"bad \xff here\n")
    message = read_error(path)
    assert "line 3001 is not UTF-8" in message and "convert the file to UTF-8" in message


def test_unknown_format(tmp_path):
    path = write(tmp_path / "x.csv", b"text\n")
    message = read_error(path)
    assert ".jsonl.zst" in message and ".parquet" in message


def test_missing_file(tmp_path):
    with pytest.raises(PipelineError, match="cannot open .*missing.jsonl.gz"):
        open_binary(tmp_path / "missing.jsonl.gz")


def test_parquet_corrupt_row_group(tmp_path):
    texts = [f"document {i} " + "lorem ipsum " * (i % 50) for i in range(3000)]
    path = write_parquet(tmp_path / "x.parquet", {"text": texts})
    chunk = pq.ParquetFile(path).metadata.row_group(1).column(0)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    middle = start + chunk.total_compressed_size // 2
    data = bytearray(path.read_bytes())
    data[middle : middle + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    records = iter_records(path)
    assert [next(records) for _ in range(1000)] == texts[:1000]
    with pytest.raises(PipelineError) as caught:
        list(records)
    assert f"{path} row group 2 of 3 is corrupt" in str(caught.value)


def test_not_a_parquet_file(tmp_path):
    path = write_parquet(tmp_path / "x.parquet", {"text": ["a", "b"]})
    path.write_bytes(path.read_bytes()[:-20])
    assert "is not a readable Parquet file" in read_error(path)


def test_parquet_without_the_column(tmp_path):
    path = write_parquet(tmp_path / "x.parquet", {"id": [1], "body": ["a"]})
    message = read_error(path)
    assert "has no columns named 'text' (it has ['id', 'body'])" in message
    assert "set tokenize.text_field" in message


def test_parquet_column_not_strings(tmp_path):
    path = write_parquet(tmp_path / "x.parquet", {"text": [1, 2]})
    assert "column 'text' holds int64, not strings" in read_error(path)


def test_parquet_null(tmp_path):
    texts = [f"t{i}" for i in range(2500)]
    texts[1501] = None
    path = write_parquet(tmp_path / "x.parquet", {"text": texts})
    assert "row group 2 of 3: row 1502 is null in column 'text'" in read_error(path, batch_rows=200)


def test_parquet_not_utf8(tmp_path):
    values = b"okok\xff"  # rows "ok", "ok", "\xff"
    offsets = pa.py_buffer(bytes(memoryview(pa.array([0, 2, 4, 5], type=pa.int32()).buffers()[1])))
    column = pa.Array.from_buffers(pa.string(), 3, [None, offsets, pa.py_buffer(values)])
    path = write_parquet(tmp_path / "x.parquet", {"text": column})
    assert "row group 1 of 1: row 3 is not UTF-8" in read_error(path)


def test_json_lines_zstd_memory_is_bounded(tmp_path):
    records = 200_000
    data = "".join(f'{{"id": {i}, "text": "document number {i} of the corpus"}}\n' for i in range(records))
    path = write(tmp_path / "big.jsonl.zst", data.encode())
    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_records(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == records
    assert peak < len(data) // 20, (peak, len(data))  # 12 MB decompressed
