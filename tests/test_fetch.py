"""stages/fetch.py: getting the corpus from a path, a file:// URL, HTTP or $CORPUS_MIRROR, and pinning it."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_stage, write_params

from stages.common import PipelineError
from stages.fetch import Corpus, fetch, file_name

# Nothing listens on the discard port of the loopback address: connecting fails at once, with no network.
UNREACHABLE_URL = "http://127.0.0.1:9/the-verdict.txt"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
TEXT = "I HAD always thought Jack Gisburn rather a cheap genius.\nThe End.\n"
NON_ASCII_TEXT = "Grüße aus Köln — 東京 ✓\n"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under `folder`: files by their bytes, folders as None."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


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


def expected_corpus(data: bytes, name: str = "the-verdict.txt") -> Corpus:
    return Corpus(file=name, bytes=len(data), chars=len(data.decode("utf-8")), sha256=sha256(data))


# Sources


def test_fetch_from_a_local_path(corpus, out_dir):
    data = corpus.read_bytes()

    result = fetch(str(corpus), sha256(data), out_dir)

    assert result == expected_corpus(data)
    assert snapshot(out_dir) == {"the-verdict.txt": data}


def test_fetch_from_a_file_url(corpus, out_dir):
    data = corpus.read_bytes()

    result = fetch(corpus.as_uri(), sha256(data), out_dir)

    assert result == expected_corpus(data)
    assert snapshot(out_dir) == {"the-verdict.txt": data}


def test_fetch_from_a_mirror_folder_while_the_url_is_unreachable(corpus, out_dir):
    data = corpus.read_bytes()

    result = fetch(UNREACHABLE_URL, sha256(data), out_dir, mirror=str(corpus.parent))

    assert result == expected_corpus(data)
    assert snapshot(out_dir) == {"the-verdict.txt": data}


def test_fetch_from_a_mirror_file_stores_it_under_the_urls_name(tmp_path, out_dir):
    copy = tmp_path / "my-copy.txt"
    copy.write_text(TEXT, encoding="utf-8")
    data = copy.read_bytes()

    result = fetch(UNREACHABLE_URL, sha256(data), out_dir, mirror=str(copy))

    assert result == expected_corpus(data)
    assert snapshot(out_dir) == {"the-verdict.txt": data}


def test_mirror_without_the_file_falls_back_to_the_url(tmp_path, corpus, out_dir):
    empty_mirror = tmp_path / "mirror"
    empty_mirror.mkdir()
    data = corpus.read_bytes()

    result = fetch(str(corpus), sha256(data), out_dir, mirror=str(empty_mirror))

    assert result == expected_corpus(data)


def test_fetch_counts_characters_not_bytes(tmp_path, out_dir):
    path = tmp_path / "utf8.txt"
    path.write_text(NON_ASCII_TEXT, encoding="utf-8")
    data = path.read_bytes()

    result = fetch(str(path), sha256(data), out_dir)

    assert result.chars == len(NON_ASCII_TEXT) < result.bytes == len(data)


def test_fetch_reads_a_corpus_larger_than_one_chunk(tmp_path, out_dir, monkeypatch):
    monkeypatch.setattr("stages.fetch.CHUNK_BYTES", 7)  # multi-byte characters straddle chunk boundaries
    path = tmp_path / "utf8.txt"
    path.write_text(NON_ASCII_TEXT * 5, encoding="utf-8")
    data = path.read_bytes()

    assert fetch(str(path), sha256(data), out_dir) == expected_corpus(data, "utf8.txt")
    assert (out_dir / "utf8.txt").read_bytes() == data


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
        fetch(str(corpus), pinned, out_dir)

    assert actual in str(error.value)
    assert pinned in str(error.value)
    assert_unchanged(out_dir, previous_output)


def test_no_reachable_source_names_them_and_suggests_the_mirror(tmp_path, out_dir, previous_output):
    missing_mirror = tmp_path / "no-such-copy.txt"

    with pytest.raises(PipelineError) as error:
        fetch(UNREACHABLE_URL, EMPTY_SHA256, out_dir, mirror=str(missing_mirror))

    message = str(error.value)
    assert "CORPUS_MIRROR" in message
    assert UNREACHABLE_URL in message
    assert str(missing_mirror) in message
    assert_unchanged(out_dir, previous_output)


def test_empty_corpus_is_an_error(tmp_path, out_dir, previous_output):
    empty = tmp_path / "the-verdict.txt"
    empty.write_bytes(b"")

    with pytest.raises(PipelineError, match=r"is empty"):
        fetch(str(empty), EMPTY_SHA256, out_dir)

    assert_unchanged(out_dir, previous_output)


def test_invalid_utf8_is_an_error(tmp_path, out_dir, previous_output):
    latin1 = tmp_path / "the-verdict.txt"
    latin1.write_bytes("café au lait\n".encode("latin-1"))

    with pytest.raises(PipelineError, match=r"is not UTF-8 text"):
        fetch(str(latin1), sha256(latin1.read_bytes()), out_dir)

    assert_unchanged(out_dir, previous_output)


def test_utf8_cut_off_at_the_end_is_an_error(tmp_path, out_dir):
    cut = tmp_path / "the-verdict.txt"
    cut.write_bytes("naïve ✓".encode()[:-1])

    with pytest.raises(PipelineError, match=r"is not UTF-8 text"):
        fetch(str(cut), sha256(cut.read_bytes()), out_dir)


def test_utf8_error_offset_counts_bytes_held_over_from_the_previous_chunk(tmp_path, out_dir, monkeypatch):
    monkeypatch.setattr("stages.fetch.CHUNK_BYTES", 3)
    broken = tmp_path / "the-verdict.txt"
    broken.write_bytes(b"ab\xe2\x82X")  # a three-byte character cut short at byte 2

    with pytest.raises(PipelineError, match=r"at byte 2\)"):
        fetch(str(broken), sha256(broken.read_bytes()), out_dir)


def test_unsupported_scheme_is_an_error(out_dir, previous_output):
    with pytest.raises(PipelineError, match=r"scheme 'ftp'"):
        fetch("ftp://127.0.0.1/the-verdict.txt", EMPTY_SHA256, out_dir)

    assert_unchanged(out_dir, previous_output)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/", "http://127.0.0.1:9/corpus/", "file:///", ""])
def test_url_without_a_file_name_is_an_error(url, out_dir):
    with pytest.raises(PipelineError, match=r"does not end in a file name"):
        fetch(url, EMPTY_SHA256, out_dir)

    assert not out_dir.parent.exists() or list(out_dir.parent.iterdir()) == []


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


# A real HTTP server on 127.0.0.1


@pytest.fixture
def http_server() -> Iterator[tuple[str, dict[str, bytes]]]:
    """Serve the `files` dict (path -> bytes) on 127.0.0.1; any other path is a 404."""
    files: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path)
            if body is None:
                self.send_error(404, "Not Found")
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", files
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_fetch_downloads_over_http(http_server, out_dir):
    base, files = http_server
    data = NON_ASCII_TEXT.encode("utf-8")
    files["/corpus/the-verdict.txt"] = data

    result = fetch(f"{base}/corpus/the-verdict.txt", sha256(data), out_dir)

    assert result == Corpus(file="the-verdict.txt", bytes=len(data), chars=len(NON_ASCII_TEXT), sha256=sha256(data))
    assert result.chars < result.bytes
    assert (out_dir / "the-verdict.txt").read_bytes() == data


def test_http_404_is_a_clear_error(http_server, out_dir, previous_output):
    base, _ = http_server
    url = f"{base}/missing.txt"

    with pytest.raises(PipelineError) as error:
        fetch(url, EMPTY_SHA256, out_dir)

    message = str(error.value)
    assert url in message
    assert "Not Found" in message
    assert "CORPUS_MIRROR" in message
    assert_unchanged(out_dir, previous_output)


# The stage as dvc runs it


def test_cli_writes_the_corpus_and_its_metrics(tmp_path, corpus):
    data = corpus.read_bytes()
    write_params(tmp_path, {"fetch": {"url": str(corpus), "sha256": sha256(data)}})

    result = run_stage("fetch", tmp_path)

    assert result.returncode == 0, result.stderr
    assert snapshot(tmp_path / "data" / "raw") == {"the-verdict.txt": data}
    metrics = json.loads((tmp_path / "metrics" / "fetch.json").read_text())
    assert metrics == {"file": "the-verdict.txt", "bytes": len(data), "chars": len(TEXT), "sha256": sha256(data)}


def test_cli_reads_corpus_mirror_from_the_environment(tmp_path, corpus):
    data = corpus.read_bytes()
    write_params(tmp_path, {"fetch": {"url": UNREACHABLE_URL, "sha256": sha256(data).upper()}})

    result = run_stage("fetch", tmp_path, env={"CORPUS_MIRROR": str(corpus.parent)})

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "raw" / "the-verdict.txt").read_bytes() == data


def test_cli_bad_sha256_is_one_error_line_and_keeps_earlier_outputs(tmp_path, corpus):
    data = corpus.read_bytes()
    write_params(tmp_path, {"fetch": {"url": str(corpus), "sha256": sha256(data)}})
    assert run_stage("fetch", tmp_path).returncode == 0
    raw_before = snapshot(tmp_path / "data")
    metrics_before = snapshot(tmp_path / "metrics")

    wrong = "ab" * 32
    write_params(tmp_path, {"fetch": {"url": str(corpus), "sha256": wrong}})
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
    ],
)
def test_cli_bad_params_are_one_error_line(tmp_path, fetch_params, fragment):
    write_params(tmp_path, {"fetch": fetch_params})

    result = run_stage("fetch", tmp_path)

    assert_one_line_error(result, fragment)
    assert not (tmp_path / "data").exists()
    assert not (tmp_path / "metrics").exists()
