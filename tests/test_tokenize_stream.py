"""Streaming tokenize: chunk borders that leave tokens unchanged, documents, odd corpora, the .npy writer."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from conftest import run_stage, set_params
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmpipe.formats import ShardWriter, ids_sha256, shard_name
from llmpipe.tokenizer import (
    CHUNK_CHARS,
    load_encoding,
    ordered_map,
    read_chunks,
    safe_cut,
    tokenize,
    tokenize_documents,
)

BORDER_TEXT = (
    "I HAD always thought Jack Gisburn rather a cheap genius--though a good fellow enough--so it was no \n\n\n"
    "great surprise to me to hear that, in the height of his glory, he had dropped his painting,   married a "
    "rich widow, and established himself in a villa on the Riviera.\t(Though I rather thought it would have "
    "been Rome or Florence.)\r\n\r\n“The height of his glory”—that was what the women called it. 漢字 and "
    "naïve café résumé... !!! ??? 1234567 don't they'll we've    \n    indented\n\n\n\nend"
)


def encode_in_chunks(text: str, encoding, chunk_chars: int, tmp_path) -> tuple[list[str], np.ndarray]:
    path = tmp_path / "corpus.txt"
    path.write_bytes(text.encode("utf-8"))
    chunks = list(read_chunks(path, chunk_chars))
    arrays: list[np.ndarray] = []
    tokenize_documents([chunks], encoding, arrays.append, num_threads=2)
    return chunks, np.concatenate(arrays)


def all_cuts_safe(chunks: list[str]) -> bool:
    """Every cut falls just before white space that follows a non-space character."""
    return all(a and b and not a[-1].isspace() and b[0] in " \n" for a, b in zip(chunks, chunks[1:], strict=False))


@pytest.fixture(params=["tiny", "gpt2"])
def encoding(request, tiny_ranks):
    if request.param == "gpt2":
        request.getfixturevalue("gpt2_cache")
        return load_encoding("gpt2")
    return load_encoding(str(tiny_ranks))


@pytest.mark.parametrize("chunk_chars", [40, 64, 100, 333])
def test_chunked_ids_equal_one_shot_encode_ordinary(encoding, chunk_chars, tmp_path):
    chunks, ids = encode_in_chunks(BORDER_TEXT, encoding, chunk_chars, tmp_path)
    text = BORDER_TEXT.replace("\r\n", "\n")  # read as the book reads it

    assert len(chunks) > 1 and all(len(chunk) <= chunk_chars for chunk in chunks)
    assert all_cuts_safe(chunks)
    assert "".join(chunks) == text
    assert ids.tolist() == encoding.encode_ordinary(text)


WORDS = st.text(alphabet="abé漢1.'s-!", min_size=1, max_size=6)
SEPARATORS = st.sampled_from([" ", "  ", "\n", "\n\n", "\t", " \n", "\u00a0", "\r\n"])


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pieces=st.lists(st.tuples(WORDS, SEPARATORS), max_size=40), chunk_chars=st.integers(12, 40))
def test_every_safe_cut_leaves_the_tokens_unchanged(tiny_ranks, tmp_path, pieces, chunk_chars):
    encoding = load_encoding(str(tiny_ranks))
    text = "".join(word + separator for word, separator in pieces)
    chunks, ids = encode_in_chunks(text, encoding, chunk_chars, tmp_path)

    assert "".join(chunks) == text.replace("\r\n", "\n")
    if all_cuts_safe(chunks):
        assert ids.tolist() == encoding.encode_ordinary(text.replace("\r\n", "\n"))


def test_safe_cut_prefers_a_line_end_after_a_word():
    text = "one two\n\nthree four"
    assert safe_cut(text, 12) == text.index("\n")
    assert safe_cut("abcdef", 4) == 4  # no white space at all: a forced cut at the limit
    assert safe_cut("short", 40) == len("short")


def test_documents_are_separated_by_one_end_of_text_and_their_starts_recorded(tiny_ranks, tmp_path):
    raw = tmp_path / "data" / "raw"
    (raw / "b-folder").mkdir(parents=True)
    (raw / "a.txt").write_text("the cat")
    (raw / "b-folder" / "c.txt").write_text("and the hat")
    (raw / "z.txt").write_text("")
    set_params(tmp_path, {"tokenize": {"encoding": str(tiny_ranks)}})

    result = run_stage("tokenize", tmp_path)

    assert result.returncode == 0, result.stderr
    encoding = load_encoding(str(tiny_ranks))
    tokens = np.fromfile(tmp_path / "data/tokens/tokens-00000.bin", np.uint16)
    a, c = encoding.encode_ordinary("the cat"), encoding.encode_ordinary("and the hat")
    eot = encoding.eot_token
    assert tokens.tolist() == [*a, eot, *c, eot]
    index = json.loads((tmp_path / "data/tokens/index.json").read_text())
    assert index["files"] == [
        {"file": "a.txt", "start": 0, "num_tokens": len(a), "num_documents": 1, "shard": 0},
        {"file": "b-folder/c.txt", "start": len(a) + 1, "num_tokens": len(c), "num_documents": 1, "shard": 0},
        {"file": "z.txt", "start": len(a) + len(c) + 2, "num_tokens": 0, "num_documents": 1, "shard": 0},
    ]
    assert json.loads((tmp_path / "metrics/tokenize.json").read_text())["num_documents"] == 3


def test_literal_end_of_text_is_text_by_default_and_the_token_on_request(tiny_ranks):
    encoding = load_encoding(str(tiny_ranks))
    text = "the end<|endoftext|>the start"

    as_text, _ = tokenize([text], encoding)
    as_token, _ = tokenize([text], encoding, literal_endoftext="token")

    assert encoding.eot_token not in as_text.tolist()
    assert as_text.tolist() == encoding.encode_ordinary(text)
    assert as_token.tolist() == [
        *encoding.encode_ordinary("the end"),
        encoding.eot_token,
        *encoding.encode_ordinary("the start"),
    ]


def test_literal_end_of_text_param_is_checked(tiny_ranks, tmp_path):
    (tmp_path / "data/raw").mkdir(parents=True)
    (tmp_path / "data/raw/a.txt").write_text("text")
    set_params(tmp_path, {"tokenize": {"encoding": str(tiny_ranks), "literal_endoftext": "maybe"}})

    result = run_stage("tokenize", tmp_path)

    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == "error: tokenize.literal_endoftext must be text or token, got 'maybe': fix it in params.yaml"
    )


@pytest.mark.parametrize(
    ("raw", "read_as"),
    [
        (b"\xef\xbb\xbfthe cat", "the cat"),  # a byte-order mark is not text
        (b"the\r\ncat\r\n", "the\ncat\n"),  # Windows line ends read as the book's open() reads them
        (b"the\rcat", "the\ncat"),  # old Mac line ends too
        (b"the\x00cat\x00", "the\x00cat\x00"),  # NUL is a character like any other
    ],
    ids=["bom", "crlf", "cr", "nul"],
)
def test_odd_corpora_are_read_as_documented(tiny_ranks, tmp_path, raw, read_as):
    path = tmp_path / "corpus.txt"
    path.write_bytes(raw)
    assert "".join(read_chunks(path)) == read_as


def test_crlf_split_across_a_chunk_border_is_one_line_end(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"abc\r\ndef\r\n" * 50)
    assert "".join(read_chunks(path, 4)) == "abc\ndef\n" * 50


def test_empty_corpus_is_an_error(tiny_ranks, tmp_path):
    (tmp_path / "data/raw").mkdir(parents=True)
    (tmp_path / "data/raw/empty.txt").write_bytes(b"")
    set_params(tmp_path, {"tokenize": {"encoding": str(tiny_ranks)}})

    result = run_stage("tokenize", tmp_path)

    assert result.returncode == 1 and "encodes to no tokens" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "data/tokens").exists()


def test_a_50_mb_line_without_white_space_is_cut_into_bounded_chunks(gpt2_cache, tmp_path):
    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    path = tmp_path / "one-line.txt"
    path.write_bytes(rng.choice(letters, size=50 * 2**20).tobytes())
    encoding = load_encoding("gpt2")
    lengths: list[int] = []
    num_tokens = 0

    def count(ids: np.ndarray) -> None:
        nonlocal num_tokens
        num_tokens += len(ids)

    chunks = (lengths.append(len(chunk)) or chunk for chunk in read_chunks(path))
    tokenize_documents([chunks], encoding, count)

    assert sum(lengths) == 50 * 2**20 and max(lengths) <= CHUNK_CHARS
    assert num_tokens > 50 * 2**20 // 8  # random letters are a few per token


def test_a_shard_is_renamed_into_place_only_when_whole(tmp_path):
    ids = np.arange(70_000, dtype=np.uint32) * 7
    with ShardWriter(tmp_path / shard_name(0), np.uint32) as writer:
        for piece in np.array_split(ids, 5):
            writer.append(piece)
        assert [p.name for p in tmp_path.iterdir()] == [f".{shard_name(0)}.tmp-{os.getpid()}"]
        entry = writer.close()

    assert np.fromfile(tmp_path / shard_name(0), np.uint32).tolist() == ids.tolist()
    assert entry == {"file": shard_name(0), "num_tokens": len(ids), "sha256": ids_sha256(ids)}
    assert writer.head == ids[:20].tolist()
    with pytest.raises(RuntimeError), ShardWriter(tmp_path / shard_name(1), np.uint32) as broken:
        broken.append(ids)
        raise RuntimeError("killed mid-shard")
    assert sorted(p.name for p in tmp_path.iterdir()) == [shard_name(0)]


def test_ordered_map_keeps_order_while_threads_finish_out_of_order():
    def slow_for_even(n: int) -> int:
        time.sleep(0.01 if n % 2 == 0 else 0)
        return n * n

    assert list(ordered_map(slow_for_even, range(40), num_threads=4)) == [n * n for n in range(40)]
