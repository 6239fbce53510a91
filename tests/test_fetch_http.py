"""The fetch stage against a real HTTP server on 127.0.0.1 that throws every fault a download meets.

Each fault ends either in success after a bounded number of retries, or in one error line, exit status 1, the
previous data/raw byte for byte and no temporary folder. The server counts the requests it gets, so each test
also proves what was retried and what was not. Backoff waits are recorded instead of slept.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_stage, set_params, stage_command
from test_fetch import (
    NON_ASCII_TEXT,
    expected_document,
    no_mirror_or_proxy,  # noqa: F401  (autouse: no proxy reroutes requests to 127.0.0.1)
    sha256,
    snapshot,
)

from llmpipe import fetch as fetch_lib
from llmpipe.cli import run
from stages import fetch as fetch_stage

DATA = NON_ASCII_TEXT.encode("utf-8") * 3
EARLIER = b"the corpus of an earlier run\n"
FILE = "/the-verdict.txt"
Reply = Callable[[BaseHTTPRequestHandler], None]


class FaultServer:
    """Serves one scripted reply per request and path; the last reply of a script repeats."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[Reply]] = {}
        self.requests: Counter[str] = Counter()
        self.release = threading.Event()  # hanging replies wait for it (set when the test ends)
        self.client_hung_up = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                script = server.scripts.get(self.path, [status(404)])
                reply = script[min(server.requests[self.path], len(script) - 1)]
                server.requests[self.path] += 1
                reply(self)

            def log_message(self, format, *args):
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # a client that gave up mid-reply is what some tests are about

        self.http = Server(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.http.server_address[1]}"

    def serve(self, path: str, *replies: Reply) -> str:
        self.scripts[path] = list(replies)
        return self.base + path


# Replies


def ok(body: bytes = DATA, pieces: int = 1, gap: float = 0.0, length: bool = True) -> Reply:
    """200 with `body`, written in `pieces` with `gap` seconds before each; no Content-Length if not `length`."""

    def reply(handler):
        handler.send_response(200)
        if length:
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        step = -(-len(body) // pieces)
        for start in range(0, len(body), step):
            time.sleep(gap)  # a slow server: each piece arrives well within the timeout
            handler.wfile.write(body[start : start + step])
            handler.wfile.flush()

    return reply


def status(code: int) -> Reply:
    return lambda handler: handler.send_error(code)


def redirect(location: str) -> Reply:
    def reply(handler):
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return reply


def short(body: bytes = DATA, sent: int = 10) -> Reply:
    """Announce all of `body`, send `sent` bytes of it, close the connection."""

    def reply(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body[:sent])
        handler.close_connection = True

    return reply


def chunked_cut_off() -> Reply:
    """A chunked body whose connection closes after its first chunk, with no last (empty) chunk."""

    def reply(handler):
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.wfile.write(b"%x\r\n%s\r\n" % (10, DATA[:10]))
        handler.close_connection = True

    return reply


def drop() -> Reply:
    """Close the connection without a word."""

    def reply(handler):
        handler.close_connection = True

    return reply


def hang(server: FaultServer, after_headers: bool) -> Reply:
    """Say nothing (or send the headers and a little of the body) until the test ends."""

    def reply(handler):
        if after_headers:
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(DATA)))
            handler.end_headers()
            handler.wfile.write(DATA[:5])
            handler.wfile.flush()
        server.release.wait(timeout=30)

    return reply


def endless(server: FaultServer) -> Reply:
    """200 with no Content-Length and a body that never ends: only the client can stop it, by hanging up."""

    def reply(handler):
        handler.send_response(200)
        handler.end_headers()
        block = b"x" * 65536
        try:
            for _ in range(4096):  # 256 MiB: far past any socket buffer, so a reader that does not stop is caught
                handler.wfile.write(block)
        except OSError:
            server.client_hung_up.set()

    return reply


# Fixtures


@pytest.fixture
def server() -> Iterator[FaultServer]:
    fault_server = FaultServer()
    thread = threading.Thread(target=fault_server.http.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield fault_server
    finally:
        fault_server.release.set()
        fault_server.http.shutdown()
        fault_server.http.server_close()
        thread.join()


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    """The backoff waits fetch asked for, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(fetch_lib, "sleep", recorded.append)
    return recorded


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A project folder holding data/raw and metrics/fetch.json from an earlier run; the current directory, and the
    command line the fetch stage's script gets from dvc.yaml."""
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "the-verdict.txt").write_bytes(EARLIER)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "fetch.json").write_text('{"file": "the-verdict.txt"}\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", stage_command("fetch")[1:])
    return tmp_path


def run_fetch(project: Path, url: str, pin: str = sha256(DATA), **fetch_params) -> subprocess.CompletedProcess:
    """Run the stage's main() in-process as `python stages/fetch.py data/raw` runs it, with fast limits unless given."""
    limits = {"timeout_seconds": 2, "retries": 3, "max_bytes": 1 << 20}
    set_params(project, {"fetch": {"url": url, "sha256": pin, **limits, **fetch_params}})
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        try:
            run(fetch_stage.main)
            returncode = 0
        except SystemExit as exit:
            returncode = exit.code
    return subprocess.CompletedProcess(sys.argv, returncode, stdout.getvalue(), stderr.getvalue())


def assert_stored(project: Path, data: bytes = DATA) -> None:
    assert snapshot(project / "data") == {"raw": None, "raw/the-verdict.txt": data}
    metrics = json.loads((project / "metrics" / "fetch.json").read_text())
    assert metrics == asdict(expected_document(data))


def assert_failed(result: subprocess.CompletedProcess, project: Path, *fragments: str) -> None:
    """One error line naming the problem, exit status 1, and the earlier outputs as they were."""
    assert_one_line_error(result, *fragments)
    assert result.returncode == 1
    assert snapshot(project / "data") == {"raw": None, "raw/the-verdict.txt": EARLIER}
    assert (project / "metrics" / "fetch.json").read_text() == '{"file": "the-verdict.txt"}\n'
    assert sorted(p.name for p in (project / "data").iterdir()) == ["raw"], "temporary folder left behind"


# Success


def test_download_over_http(server, project):
    url = server.serve(FILE, ok())

    result = run_fetch(project, url)

    assert result.returncode == 0, result.stderr
    assert_stored(project)
    assert server.requests[FILE] == 1


def test_redirects_are_followed(server, project):
    server.serve("/old/the-verdict.txt", redirect("/moved.txt"))
    server.serve("/moved.txt", redirect(server.base + FILE))
    server.serve(FILE, ok())

    result = run_fetch(project, server.base + "/old/the-verdict.txt")

    assert result.returncode == 0, result.stderr
    assert_stored(project)  # stored under the name in fetch.url
    assert server.requests == {"/old/the-verdict.txt": 1, "/moved.txt": 1, FILE: 1}


def test_a_slow_server_within_the_timeout_completes(server, project):
    # Five pieces 0.3 s apart: 1.5 s in all, more than timeout_seconds, which bounds each wait, not the download.
    url = server.serve(FILE, ok(pieces=5, gap=0.3))

    result = run_fetch(project, url, timeout_seconds=1)

    assert result.returncode == 0, result.stderr
    assert_stored(project)
    assert server.requests[FILE] == 1


# Retried faults: success when the server recovers within the retries, one error line when it does not


def test_503_twice_then_200_is_retried_with_exponential_backoff(server, project, waits):
    url = server.serve(FILE, status(503), status(503), ok())

    result = run_fetch(project, url, retries=3)

    assert result.returncode == 0, result.stderr
    assert_stored(project)
    assert server.requests[FILE] == 3
    assert waits == [fetch_lib.BACKOFF_SECONDS, 2 * fetch_lib.BACKOFF_SECONDS]
    assert "HTTP 503 Service Unavailable); retry 1/3" in result.stdout


def test_500_every_time_gives_up_after_the_retries(server, project, waits):
    url = server.serve(FILE, status(500))

    result = run_fetch(project, url, retries=2)

    assert_failed(result, project, url, "HTTP 500 Internal Server Error, 3 tries", "CORPUS_MIRROR", "fetch.url")
    assert server.requests[FILE] == 3
    assert len(waits) == 2


@pytest.mark.parametrize(
    ("code", "retried"),
    [(500, True), (502, True), (503, True), (504, True), (408, True), (429, True)]
    + [(400, False), (401, False), (403, False), (404, False), (410, False)],
)
def test_which_http_errors_are_retried(server, project, waits, code, retried):
    url = server.serve(FILE, status(code), ok())

    result = run_fetch(project, url, retries=1)

    if retried:
        assert result.returncode == 0, result.stderr
        assert_stored(project)
    else:
        assert_failed(result, project, url, f"HTTP {code}")
    assert server.requests[FILE] == (2 if retried else 1)


def test_404_is_not_retried_and_says_not_found(server, project, waits):
    url = server.serve(FILE, status(404))

    result = run_fetch(project, url, retries=3)

    assert_failed(result, project, f"could not read the-verdict.txt from {url} (HTTP 404 Not Found)", "CORPUS_MIRROR")
    assert server.requests[FILE] == 1
    assert waits == []


@pytest.mark.parametrize("after_headers", [False, True], ids=["before-headers", "mid-body"])
def test_a_hanging_connection_times_out_and_is_retried(server, project, waits, after_headers):
    url = server.serve(FILE, hang(server, after_headers), ok())

    result = run_fetch(project, url, timeout_seconds=0.2, retries=1)

    assert result.returncode == 0, result.stderr
    assert_stored(project)
    assert server.requests[FILE] == 2
    assert "no answer within fetch.timeout_seconds" in result.stdout


@pytest.mark.parametrize("after_headers", [False, True], ids=["before-headers", "mid-body"])
def test_a_connection_that_always_hangs_fails_after_the_retries(server, project, waits, after_headers):
    url = server.serve(FILE, hang(server, after_headers))

    result = run_fetch(project, url, timeout_seconds=0.2, retries=1)

    assert_failed(result, project, url, "no answer within fetch.timeout_seconds, 2 tries")
    assert server.requests[FILE] == 2


DROPPED = {
    "short-of-content-length": (lambda: short(sent=10), f"the connection closed after 10 of {len(DATA)} bytes"),
    "chunked-cut-off": (lambda: chunked_cut_off(), "IncompleteRead"),
    "closed-before-answering": (lambda: drop(), "Remote end closed connection without response"),
}


@pytest.mark.parametrize("fault", DROPPED)
def test_a_dropped_connection_is_retried(server, project, waits, fault):
    reply, _ = DROPPED[fault]
    url = server.serve(FILE, reply(), ok())

    result = run_fetch(project, url, retries=1)

    assert result.returncode == 0, result.stderr
    assert_stored(project)
    assert server.requests[FILE] == 2


@pytest.mark.parametrize("fault", DROPPED)
def test_a_connection_always_dropped_fails_after_the_retries(server, project, waits, fault):
    reply, reason = DROPPED[fault]
    url = server.serve(FILE, reply())

    result = run_fetch(project, url, retries=2)

    assert_failed(result, project, url, reason, "3 tries")
    assert server.requests[FILE] == 3


# Faults that retrying cannot fix: one request, one error line


def test_sha256_mismatch_is_not_retried(server, project, waits):
    url = server.serve(FILE, ok(b"a corpus that changed upstream\n"))

    result = run_fetch(project, url, retries=3)

    actual = sha256(b"a corpus that changed upstream\n")
    assert_failed(result, project, url, f"has sha256 {actual}, but fetch.sha256 pins {sha256(DATA)}", "update the pin")
    assert server.requests[FILE] == 1


def test_a_redirect_loop_is_not_retried(server, project, waits):
    url = server.serve(FILE, redirect(FILE))

    result = run_fetch(project, url, retries=3)

    assert_failed(result, project, url, "HTTP 302", "infinite loop")
    assert server.requests[FILE] == 5  # urllib stops when a URL comes round the fifth time
    assert waits == []


def test_a_redirect_to_another_scheme_is_refused(server, project):
    url = server.serve(FILE, redirect("ftp://127.0.0.1:9/the-verdict.txt"))

    result = run_fetch(project, url, retries=3)

    assert_failed(result, project, url, "redirect to ftp://127.0.0.1:9/the-verdict.txt refused")
    assert server.requests[FILE] == 1


def test_content_length_over_the_cap_is_refused_before_reading(server, project, waits):
    url = server.serve(FILE, ok())

    result = run_fetch(project, url, max_bytes=len(DATA) - 1)

    assert_failed(result, project, url, f"is larger than fetch.max_bytes ({len(DATA) - 1} bytes)")
    assert server.requests[FILE] == 1


def test_a_stream_over_the_cap_is_cut_off_as_soon_as_it_passes(server, project, waits):
    url = server.serve(FILE, endless(server))

    result = run_fetch(project, url, max_bytes=1000)

    assert_failed(result, project, url, "is larger than fetch.max_bytes (1000 bytes)")
    assert server.requests[FILE] == 1
    assert server.client_hung_up.wait(timeout=10), "fetch read on past the cap"


@pytest.mark.parametrize(("cap", "stored"), [(len(DATA), True), (len(DATA) - 1, False)], ids=["at-cap", "over"])
def test_the_cap_without_content_length_is_exact(server, project, cap, stored):
    url = server.serve(FILE, ok(length=False))

    result = run_fetch(project, url, max_bytes=cap)

    if stored:
        assert result.returncode == 0, result.stderr
        assert_stored(project)
    else:
        assert_failed(result, project, f"is larger than fetch.max_bytes ({cap} bytes)")


# Several remote sources, each pinned


def test_several_remote_sources(server, project):
    url = server.serve(FILE, ok())
    more = b"more text\n"
    extra = server.serve("/books/more.txt", ok(more))

    result = run_fetch(project, url, sources=[{"url": extra, "sha256": sha256(more)}])

    assert result.returncode == 0, result.stderr
    assert snapshot(project / "data" / "raw") == {"more.txt": more, "the-verdict.txt": DATA}
    metrics = json.loads((project / "metrics" / "fetch.json").read_text())
    assert (metrics["num_documents"], metrics["bytes"]) == (2, len(DATA) + len(more))


def test_one_failing_source_keeps_all_of_the_previous_output(server, project, waits):
    url = server.serve(FILE, ok())
    missing = server.base + "/books/missing.txt"

    result = run_fetch(project, url, sources=[{"url": missing, "sha256": sha256(b"")}])

    assert_failed(result, project, missing, "HTTP 404", "check fetch.sources[0].url")


# The stage as dvc runs it: a real process, real backoff


def test_cli_retries_a_503_then_succeeds(server, tmp_path):
    url = server.serve(FILE, status(503), ok())
    set_params(tmp_path, {"fetch": {"url": url, "sha256": sha256(DATA), "retries": 1}})

    result = run_stage("fetch", tmp_path)

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "raw" / "the-verdict.txt").read_bytes() == DATA
    assert server.requests[FILE] == 2
    assert result.stderr == ""  # tqdm's bar is off when stderr is not a terminal


def test_cli_404_is_one_error_line_and_exit_1(server, tmp_path):
    url = server.serve(FILE, status(404))
    set_params(tmp_path, {"fetch": {"url": url, "sha256": sha256(DATA)}})

    result = run_stage("fetch", tmp_path)

    assert_one_line_error(result, url, "HTTP 404 Not Found", "CORPUS_MIRROR")
    assert result.returncode == 1
    assert server.requests[FILE] == 1
    assert not (tmp_path / "data").exists() or list((tmp_path / "data").iterdir()) == []
