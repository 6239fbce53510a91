"""The fetch stage (llmpipe.fetch): the corpus from paths, file:// URLs, folders or $CORPUS_MIRROR, pinned.

Downloads from a real HTTP server, with every fault it can throw, are in test_fetch_http.py.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest
import yaml
from conftest import CORPUS_DIR, ROOT, VERDICT, VERDICT_SHA256, assert_one_line_error, run_stage, set_params

from llmpipe.errors import PipelineError
from llmpipe.fetch import Document, Limits, candidates, corpus_metrics, fetch, file_name
from llmpipe.params import FileSource, FolderSource, load_params, source_list
from stages.fetch import SCHEMA

# Nothing listens on the discard port of the loopback address: connecting fails at once, with no network.
UNREACHABLE_URL = "http://127.0.0.1:9/the-verdict.txt"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
TEXT = "I HAD always thought Jack Gisburn rather a cheap genius.\nThe End.\n"
NON_ASCII_TEXT = "Grüße aus Köln — 東京 ✓\n"
LIMITS = Limits(timeout_seconds=5, max_bytes=1 << 20, retries=0)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under `folder`: files by their bytes, folders as None."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def fetch_one(url: str, pin: str | None, out_dir: Path, mirror: str | None = None, limits: Limits = LIMITS):
    """fetch with fetch.url alone, as the default params.yaml has it; returns its one document."""
    [document] = fetch([FileSource(url, pin)], out_dir, limits, mirror)
    return document


@pytest.fixture(autouse=True)
def no_mirror_or_proxy(monkeypatch):
    """Tests choose their sources themselves; a proxy would reroute 127.0.0.1 requests."""
    for name in ("CORPUS_MIRROR", "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "src" / "the-verdict.txt"
    path.parent.mkdir()
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture
def out_dir(tmp_path) -> Path:
    return tmp_path / "data" / "raw"


def expected_document(data: bytes, name: str = "the-verdict.txt") -> Document:
    return Document(file=name, bytes=len(data), chars=len(data.decode("utf-8")), sha256=sha256(data))


# Sources


def test_fetch_from_a_local_path(corpus, out_dir):
    data = corpus.read_bytes()

    result = fetch_one(str(corpus), sha256(data), out_dir)

    assert result == expected_document(data)
    assert snapshot(out_dir) == {"the-verdict.txt": data}


def test_fetch_from_a_file_url(corpus, out_dir):
    data = corpus.read_bytes()

    result = fetch_one(corpus.as_uri(), sha256(data), out_dir)

    assert result == expected_document(data)
    assert snapshot(out_dir) == {"the-verdict.txt": data}


def test_fetch_from_a_mirror_folder_while_the_url_is_unreachable(corpus, out_dir):
    data = corpus.read_bytes()

    result = fetch_one(UNREACHABLE_URL, sha256(data), out_dir, mirror=str(corpus.parent))

    assert result == expected_document(data)
    assert snapshot(out_dir) == {"the-verdict.txt": data}


def test_fetch_from_a_mirror_file_stores_it_under_the_urls_name(tmp_path, out_dir):
    copy = tmp_path / "my-copy.txt"
    copy.write_text(TEXT, encoding="utf-8")
    data = copy.read_bytes()

    result = fetch_one(UNREACHABLE_URL, sha256(data), out_dir, mirror=str(copy))

    assert result == expected_document(data)
    assert snapshot(out_dir) == {"the-verdict.txt": data}


def test_mirror_without_the_file_falls_back_to_the_url(tmp_path, corpus, out_dir):
    empty_mirror = tmp_path / "mirror"
    empty_mirror.mkdir()
    data = corpus.read_bytes()

    result = fetch_one(str(corpus), sha256(data), out_dir, mirror=str(empty_mirror))

    assert result == expected_document(data)


def test_fetch_counts_characters_not_bytes(tmp_path, out_dir):
    path = tmp_path / "utf8.txt"
    path.write_text(NON_ASCII_TEXT, encoding="utf-8")
    data = path.read_bytes()

    result = fetch_one(str(path), sha256(data), out_dir)

    assert result.chars == len(NON_ASCII_TEXT) < result.bytes == len(data)


def test_fetch_reads_a_corpus_larger_than_one_chunk(tmp_path, out_dir, monkeypatch):
    monkeypatch.setattr("llmpipe.fetch.CHUNK_BYTES", 7)  # multi-byte characters straddle chunk boundaries
    path = tmp_path / "utf8.txt"
    path.write_text(NON_ASCII_TEXT * 5, encoding="utf-8")
    data = path.read_bytes()

    assert fetch_one(str(path), sha256(data), out_dir) == expected_document(data, "utf8.txt")
    assert (out_dir / "utf8.txt").read_bytes() == data


@pytest.mark.parametrize(("extra", "stored"), [(0, True), (1, False)], ids=["at-the-cap", "one-byte-over"])
def test_max_bytes_caps_local_files_too(corpus, out_dir, monkeypatch, extra, stored):
    monkeypatch.setattr("llmpipe.fetch.CHUNK_BYTES", 4)
    data = corpus.read_bytes()
    corpus.write_bytes(data + b"!" * extra)
    limits = Limits(timeout_seconds=5, max_bytes=len(data), retries=0)

    if stored:
        assert fetch_one(str(corpus), None, out_dir, limits=limits) == expected_document(data)
    else:
        with pytest.raises(PipelineError, match=rf"is larger than fetch.max_bytes \({len(data)} bytes\)"):
            fetch_one(str(corpus), None, out_dir, limits=limits)
        assert not out_dir.exists()


# Several sources: files and folders, one document each


@pytest.fixture
def folder(tmp_path) -> Path:
    """A folder of corpus files in sub-folders, with files fetch must leave out."""
    root = tmp_path / "stories"
    (root / "b" / "deep").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.txt").write_text("first story\n")
    (root / "b" / "deep" / "c.txt").write_text("third story\n")
    (root / "b" / "b.txt").write_text("second story: naïve\n")
    (root / "notes.md").write_text("not a .txt file\n")
    (root / ".hidden.txt").write_text("an editor's or a killed run's leftover\n")
    (root / ".git" / "x.txt").write_text("inside a hidden folder\n")
    return root


def test_fetch_stores_each_source_under_its_name_and_a_folder_with_its_layout(tmp_path, corpus, folder, out_dir):
    extra = tmp_path / "extra" / "letters.txt"
    extra.parent.mkdir()
    extra.write_text("Dear Jack,\n")
    sources = [
        FileSource(str(corpus), sha256(corpus.read_bytes())),
        FolderSource(str(folder), "fetch.sources[0]"),
        FileSource(extra.as_uri(), None, "fetch.sources[1]"),  # a local file needs no pin
    ]

    documents = fetch(sources, out_dir, LIMITS)

    stored = {
        "the-verdict.txt": corpus.read_bytes(),
        "stories/a.txt": b"first story\n",
        "stories/b/b.txt": "second story: naïve\n".encode(),
        "stories/b/deep/c.txt": b"third story\n",
        "letters.txt": b"Dear Jack,\n",
    }
    assert documents == [expected_document(data, name) for name, data in sorted(stored.items())]
    assert {name: data for name, data in snapshot(out_dir).items() if data is not None} == stored


def test_metrics_of_one_document_are_the_books_figures_of_its_file(corpus):
    document = expected_document(corpus.read_bytes())

    assert corpus_metrics([document]) == {
        "file": "the-verdict.txt",
        "bytes": document.bytes,
        "chars": document.chars,
        "sha256": document.sha256,
    }


def test_metrics_of_several_documents_are_totals_and_the_sha256_of_their_manifest(tmp_path, folder, out_dir):
    documents = fetch([FolderSource(str(folder), "fetch.sources[0]")], out_dir, LIMITS)
    # What `sha256sum` prints for the files, in path order, run inside data/raw.
    manifest = "".join(f"{sha256((out_dir / d.file).read_bytes())}  {d.file}\n" for d in documents)

    metrics = corpus_metrics(documents)

    assert metrics == {
        "num_documents": 3,
        "bytes": sum(len((out_dir / d.file).read_bytes()) for d in documents),
        "chars": sum(len((out_dir / d.file).read_text(encoding="utf-8")) for d in documents),
        "sha256": sha256(manifest.encode()),
    }
    assert metrics["chars"] < metrics["bytes"]  # "naïve"


def test_a_mirror_folder_stands_in_for_every_pinned_file_by_its_name(tmp_path, out_dir):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "the-verdict.txt").write_text(TEXT)
    (mirror / "more.txt").write_text("more text\n")
    sources = [
        FileSource(UNREACHABLE_URL, sha256(TEXT.encode())),
        FileSource("http://127.0.0.1:9/books/more.txt", sha256(b"more text\n"), "fetch.sources[0]"),
    ]

    documents = fetch(sources, out_dir, LIMITS, mirror=str(mirror))

    assert [d.file for d in documents] == ["more.txt", "the-verdict.txt"]
    assert snapshot(out_dir) == {"more.txt": b"more text\n", "the-verdict.txt": TEXT.encode()}


def test_a_mirror_stands_in_only_where_a_pin_checks_it(tmp_path, corpus):
    mirror_file = tmp_path / "copy.txt"
    mirror_file.write_text(TEXT)
    pinned_extra = FileSource("https://example.org/more.txt", EMPTY_SHA256, "fetch.sources[0]")
    unpinned = FileSource("local/more.txt", None, "fetch.sources[1]")

    # A mirror folder: every pinned file, under its own name; never an unpinned one.
    assert candidates(pinned_extra, "more.txt", str(tmp_path)) == [str(tmp_path / "more.txt"), pinned_extra.url]
    assert candidates(unpinned, "more.txt", str(tmp_path)) == [unpinned.url]
    # A mirror file is a copy of fetch.url only.
    main = FileSource(UNREACHABLE_URL, EMPTY_SHA256)
    assert candidates(main, "the-verdict.txt", str(mirror_file)) == [str(mirror_file), UNREACHABLE_URL]
    assert candidates(pinned_extra, "more.txt", str(mirror_file)) == [pinned_extra.url]


def test_two_sources_stored_under_one_name_is_an_error_naming_both(tmp_path, corpus, out_dir):
    other = tmp_path / "other" / "the-verdict.txt"
    other.parent.mkdir()
    other.write_text("another story\n")
    sources = [FileSource(str(corpus), None), FileSource(str(other), None, "fetch.sources[0]")]

    with pytest.raises(PipelineError, match=r"fetch.url and fetch.sources\[0\].url would both be stored as"):
        fetch(sources, out_dir, LIMITS)

    assert not out_dir.parent.exists()


def test_a_folder_named_like_a_file_source_is_a_clash_too(tmp_path, corpus, out_dir):
    folder = tmp_path / "the-verdict.txt"
    folder.mkdir()
    (folder / "a.txt").write_text("text\n")

    with pytest.raises(PipelineError, match=r"fetch.url and fetch.sources\[0\].path would both be stored"):
        fetch([FileSource(str(corpus), None), FolderSource(str(folder), "fetch.sources[0]")], out_dir, LIMITS)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda path: None, "is not a folder"),
        (lambda path: path.write_text("a file"), "is not a folder"),
        (lambda path: path.mkdir() or (path / "notes.md").write_text("no .txt here"), "holds no corpus file"),
        (lambda path: path.mkdir() or (path / "empty.txt").write_bytes(b""), "empty.txt is empty"),
        (lambda path: path.mkdir() or (path / "l1.txt").write_bytes("café".encode("latin-1")), "is not UTF-8 text"),
    ],
    ids=["missing", "a-file", "no-txt", "empty-document", "not-utf8"],
)
def test_bad_folder_is_an_error_and_keeps_the_previous_output(tmp_path, out_dir, previous_output, make, fragment):
    path = tmp_path / "stories"
    make(path)

    with pytest.raises(PipelineError, match=fragment):
        fetch([FolderSource(str(path), "fetch.sources[0]")], out_dir, LIMITS)

    assert_unchanged(out_dir, previous_output)


def test_folder_file_names_are_paths_not_urls(tmp_path, out_dir):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "ch2:draft.txt").write_text("a colon, as in a URL's scheme\n")

    [document] = fetch([FolderSource(str(folder), "fetch.sources[0]")], out_dir, LIMITS)

    assert document.file == "notes/ch2:draft.txt"


def test_a_missing_unpinned_file_names_its_key_and_no_mirror(tmp_path, out_dir):
    missing = tmp_path / "no-such.txt"

    with pytest.raises(PipelineError) as error:
        fetch([FileSource(str(missing), None, "fetch.sources[0]")], out_dir, LIMITS, mirror=str(tmp_path))

    message = str(error.value)
    assert f"could not read no-such.txt from {missing}" in message
    assert message.endswith("check fetch.sources[0].url")  # a mirror copy is used only where a pin checks it


def test_local_file_with_a_pin_is_checked(tmp_path, corpus, out_dir):
    extra = FileSource(str(corpus), "0" * 64, "fetch.sources[0]")

    with pytest.raises(PipelineError, match=r"but fetch.sources\[0\].sha256 pins 0{64}"):
        fetch([extra], out_dir, LIMITS)


# fetch.sources in params.yaml


def test_source_list_reads_files_and_folders():
    pin = "AB" * 32

    sources = source_list(
        "fetch.sources",
        [{"url": "https://example.org/a.txt", "sha256": pin}, {"url": "corpus/b.txt"}, {"path": "stories"}],
    )

    assert sources == [
        FileSource("https://example.org/a.txt", pin.lower(), "fetch.sources[0]"),
        FileSource("corpus/b.txt", None, "fetch.sources[1]"),
        FolderSource("stories", "fetch.sources[2]"),
    ]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (None, "fetch.sources must be a list ([] for none), got None"),
        ({"url": "a.txt"}, "fetch.sources must be a list"),
        ([{"url": "https://example.org/a.txt"}], "fetch.sources[0] downloads https://example.org/a.txt with no sha256"),
        ([{"url": "http://example.org/a.txt", "sha256": "abc"}], "fetch.sources[0].sha256 must be 64 hex digits"),
        ([{"path": "x"}, {"url": "a.txt", "sha": "ab"}], "fetch.sources[1] must be {url: ..., sha256: ...} or {path"),
        ([{"path": "x", "sha256": EMPTY_SHA256}], "fetch.sources[0] must be {url: ..., sha256: ...} or {path"),
        (["a.txt"], "fetch.sources[0] must be {url: ..., sha256: ...} or {path: <folder>}, got 'a.txt'"),
        ([{"url": "ftp://example.org/a.txt", "sha256": EMPTY_SHA256}], "has scheme 'ftp'"),
        ([{"path": ""}], "fetch.sources[0].path must be a non-empty string"),
    ],
)
def test_bad_source_list_is_an_error(value, fragment):
    with pytest.raises(PipelineError) as error:
        source_list("fetch.sources", value)

    assert fragment in str(error.value)


def test_default_params_are_the_book_corpus_alone_with_sane_limits():
    params = load_params("fetch", SCHEMA, ROOT / "params.yaml")

    assert params["sources"] == []
    assert params["sha256"] == VERDICT_SHA256
    assert file_name(params["url"]) == "the-verdict.txt"
    assert (params["timeout_seconds"], params["max_bytes"], params["retries"]) == (30, 10 * 2**30, 3)


def test_dvc_yaml_lists_every_fetch_param():
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["fetch"]
    section = yaml.safe_load((ROOT / "params.yaml").read_text())["fetch"]

    # The whole section: a change to any of its keys, each one a key of SCHEMA, reruns the stage.
    assert stage["params"] == ["fetch"]
    assert list(section) == list(SCHEMA)


# Errors: each leaves the previous output as it was


@pytest.fixture
def previous_output(out_dir) -> dict[str, bytes | None]:
    """data/raw from an earlier successful run."""
    out_dir.mkdir(parents=True)
    (out_dir / "the-verdict.txt").write_text("the corpus of an earlier run\n")
    return snapshot(out_dir)


def assert_unchanged(out_dir: Path, before: dict[str, bytes | None]) -> None:
    assert snapshot(out_dir) == before
    assert [p.name for p in out_dir.parent.iterdir()] == [out_dir.name], "temporary folder left behind"


def test_sha256_mismatch_names_both_hashes_and_keeps_the_previous_output(corpus, out_dir, previous_output):
    pinned = "0" * 64
    actual = sha256(corpus.read_bytes())

    with pytest.raises(PipelineError) as error:
        fetch_one(str(corpus), pinned, out_dir)

    assert actual in str(error.value)
    assert pinned in str(error.value)
    assert "fetch.sha256" in str(error.value)
    assert_unchanged(out_dir, previous_output)


def test_no_reachable_source_names_them_and_suggests_the_mirror(tmp_path, out_dir, previous_output):
    missing_mirror = tmp_path / "no-such-copy.txt"

    with pytest.raises(PipelineError) as error:
        fetch_one(UNREACHABLE_URL, EMPTY_SHA256, out_dir, mirror=str(missing_mirror))

    message = str(error.value)
    assert "CORPUS_MIRROR" in message
    assert UNREACHABLE_URL in message
    assert str(missing_mirror) in message
    assert "tries" not in message  # nothing listening is not retried
    assert_unchanged(out_dir, previous_output)


def test_empty_corpus_is_an_error(tmp_path, out_dir, previous_output):
    empty = tmp_path / "the-verdict.txt"
    empty.write_bytes(b"")

    with pytest.raises(PipelineError, match=r"is empty"):
        fetch_one(str(empty), EMPTY_SHA256, out_dir)

    assert_unchanged(out_dir, previous_output)


def test_invalid_utf8_is_an_error(tmp_path, out_dir, previous_output):
    latin1 = tmp_path / "the-verdict.txt"
    latin1.write_bytes("café au lait\n".encode("latin-1"))

    with pytest.raises(PipelineError, match=r"is not UTF-8 text"):
        fetch_one(str(latin1), sha256(latin1.read_bytes()), out_dir)

    assert_unchanged(out_dir, previous_output)


def test_utf8_cut_off_at_the_end_is_an_error(tmp_path, out_dir):
    cut = tmp_path / "the-verdict.txt"
    cut.write_bytes("naïve ✓".encode()[:-1])

    with pytest.raises(PipelineError, match=r"is not UTF-8 text"):
        fetch_one(str(cut), sha256(cut.read_bytes()), out_dir)


def test_utf8_error_offset_counts_bytes_held_over_from_the_previous_chunk(tmp_path, out_dir, monkeypatch):
    monkeypatch.setattr("llmpipe.fetch.CHUNK_BYTES", 3)
    broken = tmp_path / "the-verdict.txt"
    broken.write_bytes(b"ab\xe2\x82X")  # a three-byte character cut short at byte 2

    with pytest.raises(PipelineError, match=r"at byte 2\)"):
        fetch_one(str(broken), sha256(broken.read_bytes()), out_dir)


def test_unsupported_scheme_is_an_error(out_dir, previous_output):
    with pytest.raises(PipelineError, match=r"scheme 'ftp'"):
        fetch_one("ftp://127.0.0.1/the-verdict.txt", EMPTY_SHA256, out_dir)

    assert_unchanged(out_dir, previous_output)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/", "http://127.0.0.1:9/corpus/", "file:///", ""])
def test_url_without_a_file_name_is_an_error(url, out_dir):
    with pytest.raises(PipelineError, match=r"does not end in a file name"):
        fetch_one(url, EMPTY_SHA256, out_dir)

    assert not out_dir.parent.exists() or list(out_dir.parent.iterdir()) == []


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/.env", "corpus/..", "/tmp/.hidden"])
def test_url_ending_in_a_hidden_name_is_an_error(url, out_dir):
    # tokenize skips names starting with ".", so such a file would silently not be corpus.
    with pytest.raises(PipelineError, match=r"ends in a hidden name"):
        fetch_one(url, EMPTY_SHA256, out_dir)


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://example.org/ch02/the-verdict.txt", "the-verdict.txt"),
        ("https://example.org/the%20verdict.txt?download=1", "the verdict.txt"),
        ("file:///srv/corpus/story.txt", "story.txt"),
        ("corpus/story.txt", "story.txt"),
    ],
)
def test_file_name_is_the_last_part_of_the_urls_path(url, name):
    assert file_name(url) == name


# The stage as dvc runs it


def test_cli_writes_the_corpus_and_its_metrics(tmp_path, corpus):
    data = corpus.read_bytes()
    set_params(tmp_path, {"fetch": {"url": str(corpus), "sha256": sha256(data)}})

    result = run_stage("fetch", tmp_path)

    assert result.returncode == 0, result.stderr
    assert snapshot(tmp_path / "data" / "raw") == {"the-verdict.txt": data}
    metrics = json.loads((tmp_path / "metrics" / "fetch.json").read_text())
    assert metrics == {"file": "the-verdict.txt", "bytes": len(data), "chars": len(TEXT), "sha256": sha256(data)}


def test_cli_default_params_give_the_books_corpus_and_figures(tmp_path):
    set_params(tmp_path)

    result = run_stage("fetch", tmp_path, env={"CORPUS_MIRROR": str(CORPUS_DIR)})

    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "metrics" / "fetch.json").read_text())
    assert metrics == {"file": "the-verdict.txt", "bytes": 20479, "chars": 20479, "sha256": VERDICT_SHA256}
    assert [p.name for p in (tmp_path / "data" / "raw").iterdir()] == ["the-verdict.txt"]


def test_cli_several_sources(tmp_path, corpus, folder):
    data = corpus.read_bytes()
    set_params(tmp_path, {"fetch": {"url": str(corpus), "sha256": sha256(data), "sources": [{"path": str(folder)}]}})

    result = run_stage("fetch", tmp_path)

    assert result.returncode == 0, result.stderr
    raw = tmp_path / "data" / "raw"
    files = sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file())
    assert files == ["stories/a.txt", "stories/b/b.txt", "stories/b/deep/c.txt", "the-verdict.txt"]
    metrics = json.loads((tmp_path / "metrics" / "fetch.json").read_text())
    assert metrics["num_documents"] == 4
    assert metrics["bytes"] == sum((raw / file).stat().st_size for file in files)
    assert "file" not in metrics


def test_cli_reads_corpus_mirror_from_the_environment(tmp_path, corpus):
    data = corpus.read_bytes()
    set_params(tmp_path, {"fetch": {"url": UNREACHABLE_URL, "sha256": sha256(data).upper()}})

    result = run_stage("fetch", tmp_path, env={"CORPUS_MIRROR": str(corpus.parent)})

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "raw" / "the-verdict.txt").read_bytes() == data


def test_cli_bad_sha256_is_one_error_line_and_keeps_earlier_outputs(tmp_path, corpus):
    data = corpus.read_bytes()
    set_params(tmp_path, {"fetch": {"url": str(corpus), "sha256": sha256(data)}})
    assert run_stage("fetch", tmp_path).returncode == 0
    raw_before = snapshot(tmp_path / "data")
    metrics_before = snapshot(tmp_path / "metrics")

    wrong = "ab" * 32
    set_params(tmp_path, {"fetch": {"url": str(corpus), "sha256": wrong}})
    result = run_stage("fetch", tmp_path)

    assert_one_line_error(result, wrong, sha256(data))
    assert snapshot(tmp_path / "data") == raw_before
    assert snapshot(tmp_path / "metrics") == metrics_before


@pytest.mark.parametrize(
    ("fetch_params", "fragment"),
    [
        ({"sha256": "not-a-hash"}, "fetch.sha256 must be 64 hex digits"),
        ({"url": ""}, "fetch.url must be a non-empty string"),
        ({"urll": "x"}, "unknown key fetch.urll"),
        ({"sources": [{"url": "a.txt", "sha": EMPTY_SHA256}]}, "fetch.sources[0] must be {url: ..., sha256: ...}"),
        ({"timeout_seconds": 0}, "fetch.timeout_seconds must be a positive number, got 0"),
        ({"timeout_seconds": float("nan")}, "fetch.timeout_seconds must be a positive number"),
        ({"timeout_seconds": True}, "fetch.timeout_seconds must be a positive number, got True"),
        ({"max_bytes": 0}, "fetch.max_bytes must be a positive integer, got 0"),
        ({"max_bytes": 1.5}, "fetch.max_bytes must be a positive integer, got 1.5"),
        ({"retries": -1}, "fetch.retries must be a non-negative integer, got -1"),
    ],
)
def test_cli_bad_params_are_one_error_line(tmp_path, fetch_params, fragment):
    set_params(tmp_path, {"fetch": fetch_params})

    result = run_stage("fetch", tmp_path)

    assert_one_line_error(result, fragment)
    assert not (tmp_path / "data").exists()
    assert not (tmp_path / "metrics").exists()


# Corpus formats and S3


def test_a_folder_source_copies_every_corpus_format_at_any_depth(tmp_path):
    folder = tmp_path / "shards"
    (folder / "2024" / "06").mkdir(parents=True)
    files = {
        "a.txt": b"plain text\n",
        "2024/b.jsonl.gz": gzip.compress(b'{"text": "a record"}\n'),
        "2024/06/c.parquet": b"PAR1 stands in for parquet bytes PAR1",
        "2024/06/notes.md": b"not corpus",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    set_params(tmp_path, {"fetch": {"url": str(VERDICT), "sources": [{"path": str(folder)}]}})

    result = run_stage("fetch", tmp_path)

    assert result.returncode == 0, result.stderr
    raw = tmp_path / "data" / "raw" / "shards"
    stored = sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file())
    assert stored == ["2024/06/c.parquet", "2024/b.jsonl.gz", "a.txt"]
    assert all((raw / name).read_bytes() == files[name] for name in stored)


def test_an_s3_source_is_read_with_the_dvc_remotes_settings(tmp_path, s3_server):
    endpoint, s3 = s3_server
    corpus = VERDICT.read_bytes()
    s3.put_object(Bucket="team-cache", Key="corpora/the-verdict-copy.txt", Body=corpus)
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text(
        f"[core]\n    remote = s3\n['remote \"s3\"']\n    url = s3://team-cache/cache\n    endpointurl = {endpoint}\n"
    )
    url = "s3://team-cache/corpora/the-verdict-copy.txt"
    set_params(tmp_path, {"fetch": {"url": str(VERDICT), "sources": [{"url": url, "sha256": VERDICT_SHA256}]}})

    result = run_stage("fetch", tmp_path)

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "raw" / "the-verdict-copy.txt").read_bytes() == corpus
    s3.delete_object(Bucket="team-cache", Key="corpora/the-verdict-copy.txt")
    assert_one_line_error(run_stage("fetch", tmp_path), "could not read the-verdict-copy.txt", url)
    assert (tmp_path / "data" / "raw" / "the-verdict-copy.txt").read_bytes() == corpus  # the output as it was
