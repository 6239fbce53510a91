"""stages/tokenize.py: BPE token ids with tiktoken, end-of-text between documents, the saved array."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MERGES, VERDICT, run_stage, set_params, write_ranks_file

from llmpipe.errors import PipelineError
from llmpipe.files import write_json
from llmpipe.formats import ids_sha256, load_tokens, shard_name, token_dtype, write_token_index
from llmpipe.tokenizer import END_OF_TEXT, corpus_files, load_encoding, read_chunks, tokenize

VERDICT_NUM_TOKENS = 5145
VERDICT_FIRST_TOKENS = [40, 367, 2885, 1464, 1807, 3619, 402, 271, 10899, 2138, 257, 7026, 15632, 438, 2016, 257, 922]
VERDICT_FIRST_TOKENS += [5891, 1576, 438]
GPT2_VOCAB = 50257
TINY_VOCAB = 256 + len(TINY_MERGES) + 1  # the bytes, the merges, end-of-text


@pytest.fixture(autouse=True)
def no_corpus_mirror(monkeypatch):
    monkeypatch.delenv("CORPUS_MIRROR", raising=False)


@pytest.fixture
def tiny(tiny_ranks):
    return load_encoding(str(tiny_ranks))


# The encoding


def test_load_encoding_from_a_ranks_file(tiny):
    assert tiny.name == "tiny"
    assert tiny.n_vocab == TINY_VOCAB
    assert tiny.eot_token == TINY_VOCAB - 1
    # " the" and " and" are merges of the tiny ranks, so each is one token
    assert tiny.encode_ordinary("the and") == [256 + TINY_MERGES.index(b"the"), 256 + TINY_MERGES.index(b" and")]


def test_load_encoding_from_a_relative_ranks_file(tiny_ranks, monkeypatch):
    monkeypatch.chdir(tiny_ranks.parent)

    assert load_encoding(tiny_ranks.name).n_vocab == TINY_VOCAB


def test_unknown_encoding_name_lists_the_known_ones():
    with pytest.raises(PipelineError) as error:
        load_encoding("gpt3")

    message = str(error.value)
    assert "'gpt3' is unknown" in message
    assert "gpt2" in message
    assert "cl100k_base" in message


def test_an_edited_ranks_file_is_read_again_not_served_from_a_cache(tmp_path):
    path = write_ranks_file(tmp_path / "bpe.tiktoken")
    assert load_encoding(str(path)).n_vocab == TINY_VOCAB

    write_ranks_file(path, merges=[b"th"])

    assert load_encoding(str(path)).n_vocab == 256 + 1 + 1


def test_missing_ranks_file_is_an_error(tmp_path):
    with pytest.raises(PipelineError, match=r"cannot read .*missing\.tiktoken"):
        load_encoding(str(tmp_path / "missing.tiktoken"))


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("one-field\n", "is not a .tiktoken ranks file"),
        ("YQ== notanumber\n", "is not a .tiktoken ranks file"),
        ("YQ== 0 extra\n", "is not a .tiktoken ranks file"),
        ("", "holds no ranks"),
    ],
    ids=["one-field", "rank-not-a-number", "three-fields", "empty"],
)
def test_malformed_ranks_file_is_an_error(tmp_path, content, fragment):
    path = tmp_path / "bad.tiktoken"
    path.write_text(content)

    with pytest.raises(PipelineError, match=fragment):
        load_encoding(str(path))


@pytest.mark.parametrize(
    ("vocab_size", "dtype"),
    [(271, np.uint16), (GPT2_VOCAB, np.uint16), (65536, np.uint16), (65537, np.uint32), (200019, np.uint32)],
)
def test_token_dtype_is_the_smallest_that_holds_every_id(vocab_size, dtype):
    assert token_dtype(vocab_size) == np.dtype(dtype)
    assert np.iinfo(token_dtype(vocab_size)).max >= vocab_size - 1


# tokenize()


def test_end_of_text_goes_between_documents(tiny):
    first, second = "the cat sat", "and then the end"

    ids, starts = tokenize([first, second], tiny)

    first_ids, second_ids = tiny.encode_ordinary(first), tiny.encode_ordinary(second)
    assert starts == [0, len(first_ids) + 1]
    assert ids.tolist() == [*first_ids, tiny.eot_token, *second_ids]
    assert ids.dtype == np.uint16


def test_ids_round_trip_through_decode(tiny):
    documents = ["the cat sat on the mat", "Grüße — 東京\n", "and the end"]

    ids, starts = tokenize(documents, tiny)

    ends = [start - 1 for start in starts[1:]] + [len(ids)]
    assert [tiny.decode(ids[start:end].tolist()) for start, end in zip(starts, ends, strict=True)] == documents
    assert tiny.decode(ids.tolist()) == END_OF_TEXT.join(documents)


def test_one_document_has_no_end_of_text(tiny):
    ids, starts = tokenize(["the end"], tiny)

    assert starts == [0]
    assert tiny.eot_token not in ids.tolist()
    assert ids.tolist() == tiny.encode_ordinary("the end")


def test_no_documents_give_an_empty_array(tiny):
    ids, starts = tokenize([], tiny)

    assert starts == []
    assert ids.shape == (0,)
    assert ids.dtype == np.uint16


def test_literal_end_of_text_in_the_text_is_ordinary_text(tiny):
    document = f"the end{END_OF_TEXT}the start"

    ids, starts = tokenize([document], tiny)

    assert tiny.eot_token not in ids.tolist()
    assert ids.tolist() == tiny.encode_ordinary(document)
    assert tiny.decode(ids.tolist()) == document


def test_large_vocabulary_gives_uint32_ids():
    class BigEncoding:
        n_vocab = 70_000
        eot_token = 69_999

        def encode_to_numpy(self, text, allowed_special, disallowed_special):
            return np.array([65_536 + len(text), 1], dtype=np.uint32)

    ids, starts = tokenize(["ab", "abc"], BigEncoding())

    assert ids.dtype == np.uint32
    assert ids.tolist() == [65_538, 1, 69_999, 65_539, 1]
    assert starts == [0, 3]


# The real GPT-2 encoding and the book's corpus, from tests/data


@pytest.fixture
def verdict() -> str:
    return VERDICT.read_text(encoding="utf-8")


def test_gpt2_encodes_the_verdict_as_in_the_book(gpt2_cache, verdict):
    gpt2 = load_encoding("gpt2")

    ids, starts = tokenize([verdict], gpt2)

    assert gpt2.n_vocab == GPT2_VOCAB
    assert gpt2.eot_token == GPT2_VOCAB - 1
    assert starts == [0]
    assert len(ids) == VERDICT_NUM_TOKENS
    assert ids[:20].tolist() == VERDICT_FIRST_TOKENS
    assert ids.dtype == np.uint16
    assert np.array_equal(ids, np.array(gpt2.encode_ordinary(verdict)))


# The stage as dvc runs it


def test_cli_fetch_then_tokenize_the_verdict(tmp_path, gpt2_cache):
    set_params(tmp_path, {"fetch": {"url": str(VERDICT)}})
    fetched = run_stage("fetch", tmp_path)
    assert fetched.returncode == 0, fetched.stderr

    first = run_stage("tokenize", tmp_path)

    assert first.returncode == 0, first.stderr
    tokens_dir = tmp_path / "data" / "tokens"
    tokens = np.fromfile(tokens_dir / "tokens-00000.bin", np.uint16)
    assert tokens.shape == (VERDICT_NUM_TOKENS,)
    assert tokens[:20].tolist() == VERDICT_FIRST_TOKENS
    index = json.loads((tokens_dir / "index.json").read_text())
    assert index == {
        "format": "llmpipe-tokens/1",
        "encoding": "gpt2",
        "vocab_size": GPT2_VOCAB,
        "eot_token": GPT2_VOCAB - 1,
        "dtype": "uint16",
        "num_tokens": VERDICT_NUM_TOKENS,
        "shards": [{"file": "tokens-00000.bin", "num_tokens": VERDICT_NUM_TOKENS, "sha256": ids_sha256(tokens)}],
        "files": [
            {"file": "the-verdict.txt", "start": 0, "num_tokens": VERDICT_NUM_TOKENS, "num_documents": 1, "shard": 0}
        ],
    }
    metrics = json.loads((tmp_path / "metrics" / "tokenize.json").read_text())
    assert metrics["num_tokens"] == VERDICT_NUM_TOKENS
    assert json.loads(metrics["first_tokens"]) == VERDICT_FIRST_TOKENS

    outputs = [*sorted(tokens_dir.iterdir()), tmp_path / "metrics" / "tokenize.json"]
    before = [path.read_bytes() for path in outputs]
    second = run_stage("tokenize", tmp_path)

    assert second.returncode == 0, second.stderr
    assert [path.read_bytes() for path in outputs] == before


def test_stage_records_each_document_with_a_tiny_encoding(tmp_path, tiny_ranks):
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "b.txt").write_text("and the end")
    (raw / "a.txt").write_text("the cat")
    (raw / ".a.txt.tmp-1").write_text("a leftover, not a document")
    set_params(tmp_path, {"tokenize": {"encoding": str(tiny_ranks)}})

    assert run_stage("tokenize", tmp_path).returncode == 0

    tokens, meta = load_tokens(tmp_path / "data" / "tokens")
    tiny = load_encoding(str(tiny_ranks))
    a_ids, b_ids = tiny.encode_ordinary("the cat"), tiny.encode_ordinary("and the end")
    assert tokens.tolist() == [*a_ids, tiny.eot_token, *b_ids]
    assert meta["files"] == [
        {"file": "a.txt", "start": 0, "num_tokens": len(a_ids), "num_documents": 1, "shard": 0},
        {"file": "b.txt", "start": len(a_ids) + 1, "num_tokens": len(b_ids), "num_documents": 1, "shard": 0},
    ]
    assert meta["vocab_size"] == TINY_VOCAB
    assert meta["eot_token"] == tiny.eot_token


def test_corpus_files_are_sorted_and_skip_hidden_files_and_folders(tmp_path):
    (tmp_path / "b.txt").write_text("b")
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / ".hidden").write_text("h")
    (tmp_path / "folder").mkdir()

    assert [p.name for p in corpus_files(tmp_path)] == ["a.txt", "b.txt"]


@pytest.mark.parametrize("make", [lambda raw: None, lambda raw: raw.mkdir()], ids=["missing", "empty"])
def test_no_corpus_file_is_an_error(tmp_path, make):
    raw = tmp_path / "raw"
    make(raw)

    with pytest.raises(PipelineError, match=r"holds no corpus file: run `dvc repro fetch`"):
        corpus_files(raw)


def test_corpus_that_is_not_utf8_is_an_error(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café".encode("latin-1"))

    with pytest.raises(PipelineError, match=r"latin1.txt line 1 is not UTF-8"):
        list(read_chunks(path))


# load_tokens


@pytest.fixture
def tokens_dir(tmp_path) -> Path:
    """A tokens folder of two shards holding 0..999, as the tokenize stage lays it out."""
    folder = tmp_path / "tokens"
    folder.mkdir()
    shards = []
    for k, ids in enumerate(np.split(np.arange(1000, dtype=np.uint16), [600])):
        ids.tofile(folder / shard_name(k))
        shards.append({"file": shard_name(k), "num_tokens": len(ids), "sha256": ids_sha256(ids)})
    write_token_index(folder, "gpt2", 50257, 50256, shards, [])
    return folder


def test_load_tokens_reads_the_shards_as_one_array(tokens_dir):
    tokens, index = load_tokens(tokens_dir, verify=True)

    assert len(tokens) == index["num_tokens"] == 1000
    assert tokens.tolist() == list(range(1000))
    assert tokens[598:603].tolist() == [598, 599, 600, 601, 602]  # across the shards
    assert tokens[600] == 600 and tokens[-1] == 999
    assert np.concatenate(list(tokens.chunks(5, 995, size=7))).tolist() == list(range(5, 995))
    assert all(len(chunk) <= 7 for chunk in tokens.chunks(size=7))


@pytest.mark.parametrize("keep", [0, 1, 100, -1], ids=["empty", "odd-byte", "short", "last-byte"])
def test_load_tokens_rejects_a_truncated_shard(tokens_dir, keep):
    path = tokens_dir / shard_name(1)
    path.write_bytes(path.read_bytes()[:keep])

    with pytest.raises(PipelineError, match=r"tokens-00001.bin does not hold the 400 ids"):
        load_tokens(tokens_dir)


@pytest.mark.parametrize(
    "change", [{"dtype": "uint32"}, {"dtype": "int16"}, {"num_tokens": 999}, {"format": "x"}], ids=str
)
def test_load_tokens_rejects_an_index_that_does_not_match_its_shards(tokens_dir, change):
    index = json.loads((tokens_dir / "index.json").read_text())
    write_json(tokens_dir / "index.json", {**index, **change})

    with pytest.raises(PipelineError, match=r"index.json|tokens-0000"):
        load_tokens(tokens_dir)


def test_load_tokens_without_its_index_says_to_rebuild(tokens_dir):
    (tokens_dir / "index.json").unlink()

    with pytest.raises(PipelineError, match=r"not found"):
        load_tokens(tokens_dir)


def test_an_edited_id_is_found_by_verify_only(tokens_dir):
    ids = np.fromfile(tokens_dir / shard_name(1), np.uint16)
    ids[7] += 1
    ids.tofile(tokens_dir / shard_name(1))

    assert load_tokens(tokens_dir)[0][607] == 608  # opening checks sizes, not every id
    with pytest.raises(PipelineError, match=r"tokens-00001.bin was edited or corrupted"):
        load_tokens(tokens_dir, verify=True)
