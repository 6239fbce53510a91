"""Reliability: no hangs, no tracebacks, no silent stale or wrong results (docs/reliability.md).

Each failure is made for real and the stage run as dvc.yaml runs it: a real FIFO, socket and device in a corpus
folder, a real HTTP server on 127.0.0.1 that trickles a byte at a time or fails every request, a real TCP server
that accepts tiktoken's download and never answers, a real full filesystem (a small tmpfs), real SIGINT and
SIGTERM. Each ends in one `error:` line (or the documented success), the earlier outputs as they were, and no
temporary file left behind. The tests that run the real `dvc` are in test_reliability_dvc.py.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml
from conftest import (
    CORPUS,
    CORPUS_DIR,
    ROOT,
    assert_one_line_error,
    copy_project,
    make_project,
    run_stage,
    set_params,
    snapshot,
    stage_command,
    write_ranks_file,
)

from llmpipe import fetch as fetch_lib
from llmpipe.cli import run
from llmpipe.data import load_dataset
from llmpipe.embeddings import check_ids
from llmpipe.errors import MAX_MESSAGE_CHARS, PipelineError
from stages import fetch as fetch_stage

EARLIER = b"the corpus of an earlier run\n"
NO_PROXY = {name: "" for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")}
A_PIN = "0" * 64
WAIT_SECONDS = 60  # the longest any stage here may take before the test calls it a hang


# Helpers


def fetch_project(directory: Path, **fetch_params) -> Path:
    """A project holding data/raw and metrics/fetch.json from an earlier run, with `fetch_params` set."""
    (directory / "data" / "raw").mkdir(parents=True)
    (directory / "data" / "raw" / "the-verdict.txt").write_bytes(EARLIER)
    (directory / "metrics").mkdir()
    (directory / "metrics" / "fetch.json").write_text('{"file": "the-verdict.txt"}\n')
    set_params(directory, {"fetch": fetch_params})
    return directory


def stage(name: str, project: Path, **env: str) -> subprocess.CompletedProcess:
    """Run stage `name` in `project` as dvc.yaml does, with no proxy unless `env` sets one; a hang fails the test."""
    try:
        return run_stage(name, project, env={**NO_PROXY, **env})
    except subprocess.TimeoutExpired:
        pytest.fail(f"stage {name} hung")


def start_stage(name: str, project: Path, command: list[str] | None = None, **env: str) -> subprocess.Popen:
    """Start stage `name` in the background as dvc.yaml runs it (or `command`), stderr captured."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **NO_PROXY, **env}
    return subprocess.Popen(
        command or stage_command(name), cwd=project, env=full_env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )


def leftovers(folder: Path) -> list[str]:
    """The temporary siblings (`.<name>.tmp-<pid>`, `.<name>.old-<pid>`) in `folder`."""
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    return sorted(name for name in names if re.fullmatch(r"\..+\.(tmp|old)-\d+", name))


def assert_nothing_lost(project: Path, before: dict[str, bytes]) -> None:
    """The outputs are byte for byte as `before` (a snapshot of data/ and metrics/), with no temporary file."""
    assert snapshot(project, "data", "metrics") == before
    assert leftovers(project / "data") == leftovers(project / "metrics") == []


def wait_until(condition: Callable[[], bool], process: subprocess.Popen, seconds: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"the stage ended first: {process.stderr.read().decode()}"
        assert time.monotonic() < deadline, "the stage never got there"
        time.sleep(0.005)


def dead_pid() -> int:
    """The id of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# Servers on 127.0.0.1


@contextmanager
def http_server(reply: Callable[[BaseHTTPRequestHandler, threading.Event], None]) -> Iterator[str]:
    """A threaded HTTP server answering every GET with reply(handler, stop); yields its base URL. `stop` is set
    when the test ends, for replies that would otherwise go on."""
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            reply(self, stop)

        def log_message(self, format, *args):
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):
            pass  # a client that hung up mid-reply is what these tests are about

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join()


def trickle(size: int = 1 << 20, gap: float = 0.05) -> Callable:
    """200 announcing `size` bytes, then one byte every `gap` seconds: each read succeeds well within any timeout."""

    def reply(handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(size))
        handler.end_headers()
        for _ in range(size):
            if stop.wait(gap):
                return
            try:
                handler.wfile.write(b"x")
                handler.wfile.flush()
            except OSError:
                return

    return reply


def always(code: int) -> Callable:
    return lambda handler, stop: handler.send_error(code)


class StalledServer:
    """A TCP server on 127.0.0.1 that accepts every connection and never sends or reads a byte."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)  # so that the accepting thread sees `closing` (close() does not wake accept)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                self.connections.append(self.listener.accept()[0])
            except TimeoutError:
                pass

    def close(self) -> None:
        self.closing.set()
        self.thread.join()
        self.listener.close()
        for connection in self.connections:
            connection.close()


@pytest.fixture
def stalled() -> Iterator[StalledServer]:
    server = StalledServer()
    yield server
    server.close()


# A full filesystem: a small tmpfs, filled


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at the empty folder `path` for the block, unmounted after it.

    Needs root (CAP_SYS_ADMIN). Where it cannot be mounted the test is skipped, saying so: no other way makes a
    real ENOSPC (RLIMIT_FSIZE gives EFBIG, /dev/full cannot hold an output folder). docs/reliability.md.
    """
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill ({mounted.stderr.decode().strip()}): run as root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(folder: Path) -> None:
    """Write .filler in `folder` until its filesystem has no byte left."""
    with open(folder / ".filler", "ab", buffering=0) as filler:
        for block in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    filler.write(b"\0" * block)
            except OSError as error:
                assert error.errno == 28, error


@contextmanager
def full(folder: Path) -> Iterator[None]:
    """`folder`, with what it holds, moved onto a tmpfs that is then filled to the last byte."""
    held = folder.with_name(folder.name + ".held")
    folder.rename(held)
    with tmpfs(folder, "4m"):
        shutil.copytree(held, folder, dirs_exist_ok=True, symlinks=True)
        shutil.rmtree(held)
        fill(folder)
        yield
        (folder / ".filler").unlink()


# Hangs: a FIFO, a socket, a device


def make_fifo(folder: Path) -> Path:
    os.mkfifo(folder / "pipe.txt")
    return folder / "pipe.txt"


def make_socket(folder: Path) -> Path:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "socket.txt"))
    server.close()  # the socket file stays
    return folder / "socket.txt"


def make_device_link(folder: Path) -> Path:
    (folder / "zero.txt").symlink_to("/dev/zero")
    return folder / "zero.txt"


@pytest.mark.parametrize(
    "make, kind, fetch_params",
    [
        (make_fifo, "a FIFO", {}),
        (make_socket, "a socket", {}),
        (make_device_link, "a character device", {"allow_outside_symlinks": True}),  # past the link check
    ],
    ids=["fifo", "socket", "device"],
)
def test_a_non_regular_file_in_a_folder_source_is_refused_at_once(tmp_path, make, kind, fetch_params):
    folder = tmp_path / "stories"
    folder.mkdir()
    (folder / "a.txt").write_text("a story\n")
    special = make(folder)
    project = fetch_project(tmp_path / "project", sources=[{"path": str(folder)}], **fetch_params)
    before = snapshot(project, "data", "metrics")

    result = stage("fetch", project, CORPUS_MIRROR=str(CORPUS_DIR))

    assert_one_line_error(result, str(special), f"is {kind}, not a regular file")
    assert_nothing_lost(project, before)


@pytest.mark.parametrize("url", ["/dev/zero", "file:///dev/zero", "/dev/null"])
def test_a_device_as_a_file_source_is_refused(tmp_path, url):
    project = fetch_project(tmp_path / "project", sources=[{"url": url}])
    before = snapshot(project, "data", "metrics")

    result = stage("fetch", project, CORPUS_MIRROR=str(CORPUS_DIR))

    assert_one_line_error(result, "not a regular file")
    assert_nothing_lost(project, before)


# Hangs: a server that trickles the body


def test_a_trickling_server_is_stopped_at_the_per_file_deadline(tmp_path):
    with http_server(trickle(size=1 << 20, gap=0.02)) as base:
        url = f"{base}/the-verdict.txt"
        project = fetch_project(tmp_path / "project", url=url, timeout_seconds=5, deadline_seconds=1.5, retries=3)
        before = snapshot(project, "data", "metrics")
        started = time.monotonic()

        result = stage("fetch", project)

    # Without the deadline: a MiB at 50 bytes a second, about six hours (times four tries).
    assert time.monotonic() - started < 15
    assert_one_line_error(result, url, "fetch.deadline_seconds (1.5 s)", "bytes received of 1048576")
    received = int(re.search(r"(\d+) bytes received", result.stderr)[1])
    assert 0 < received < 1 << 20
    assert_nothing_lost(project, before)


def test_the_deadline_default_is_in_params_and_a_file_within_it_completes(tmp_path):
    assert set_params(tmp_path)["fetch"]["deadline_seconds"] == fetch_lib.DEADLINE_SECONDS == 3600
    with http_server(trickle(size=40, gap=0.01)) as base:
        data = b"x" * 40
        project = fetch_project(tmp_path / "p", url=f"{base}/x.txt", sha256=hashlib.sha256(data).hexdigest())

        result = stage("fetch", project)

    assert result.returncode == 0, result.stderr
    assert (project / "data" / "raw" / "x.txt").read_bytes() == data


# Hangs: backoff without a ceiling


def run_fetch_in_process(project: Path, monkeypatch, **fetch_params) -> subprocess.CompletedProcess:
    """The fetch stage's main() run in-process through llmpipe.cli.run, as `python stages/fetch.py data/raw`."""
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "argv", stage_command("fetch")[1:])
    for name in NO_PROXY:
        monkeypatch.delenv(name, raising=False)
    set_params(project, {"fetch": fetch_params})
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        try:
            run(fetch_stage.main)
            returncode = 0
        except SystemExit as exit:
            returncode = exit.code
    return subprocess.CompletedProcess(sys.argv, returncode, stdout.getvalue(), stderr.getvalue())


def test_backoff_waits_are_capped_each_and_in_total(tmp_path, monkeypatch):
    """fetch.retries: 1000 against a server that fails every request: the waits (recorded, not slept) double up
    to MAX_BACKOFF_SECONDS and stop before their sum passes MAX_BACKOFF_TOTAL_SECONDS."""
    waits: list[float] = []
    monkeypatch.setattr(fetch_lib, "sleep", waits.append)
    with http_server(always(503)) as base:
        project = fetch_project(tmp_path / "project")
        before = snapshot(project, "data", "metrics")

        result = run_fetch_in_process(project, monkeypatch, url=f"{base}/the-verdict.txt", retries=1000)

    assert waits[:6] == [1, 2, 4, 8, 16, 30]
    assert max(waits) == fetch_lib.MAX_BACKOFF_SECONDS == 30
    assert sum(waits) <= fetch_lib.MAX_BACKOFF_TOTAL_SECONDS < sum(waits) + 30
    assert_one_line_error(result, "HTTP 503", f"{len(waits) + 1} tries")
    assert_nothing_lost(project, before)


def test_no_retry_starts_past_the_deadline(tmp_path, monkeypatch):
    """With a deadline of 10 s, the waits (on a clock that the recorded sleeps move) stop before it."""
    clock = [0.0]
    monkeypatch.setattr(fetch_lib, "monotonic", lambda: clock[0])
    monkeypatch.setattr(fetch_lib, "sleep", lambda seconds: clock.__setitem__(0, clock[0] + seconds))
    with http_server(always(503)) as base:
        project = fetch_project(tmp_path / "project")

        result = run_fetch_in_process(
            project, monkeypatch, url=f"{base}/the-verdict.txt", retries=1000, deadline_seconds=10
        )

    assert clock[0] == 1 + 2 + 4  # the next wait, 8 s, would end past the deadline
    assert_one_line_error(result, "HTTP 503", "4 tries")


# Hangs: tiktoken's download


def test_tiktoken_download_to_a_server_that_never_answers_is_bounded(tmp_path, stalled):
    """tiktoken fetches gpt2's files through the proxy the environment names (requests honours HTTPS_PROXY): a
    server that accepts and never answers. The stage's deadline (DOWNLOAD_SECONDS, 120 s, lowered to 2 s here)
    ends it in one line naming TIKTOKEN_CACHE_DIR."""
    project = make_project(tmp_path / "project", "gpt2")
    (project / "data" / "tokens").mkdir()
    (project / "data" / "tokens" / "earlier").write_text("an earlier output\n")
    before = snapshot(project, "data")
    lowered = (
        "import runpy, sys; import llmpipe.tokenizer as tokenizer; tokenizer.DOWNLOAD_SECONDS = 2; "
        "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    empty_cache = tmp_path / "empty-cache"
    empty_cache.mkdir()
    started = time.monotonic()

    process = start_stage(
        "tokenize",
        project,
        [sys.executable, "-c", lowered, *stage_command("tokenize")[1:]],
        TIKTOKEN_CACHE_DIR=str(empty_cache),
        **{name: stalled.url for name in NO_PROXY},
        NO_PROXY="",
        no_proxy="",
    )
    _, stderr = process.communicate(timeout=WAIT_SECONDS)

    assert time.monotonic() - started < 20
    assert stalled.connections, "tiktoken never reached the stalled server"
    assert_one_line_error(
        subprocess.CompletedProcess(process.args, process.returncode, "", stderr.decode()),
        "could not load encoding 'gpt2'",
        "did not finish within 2 s",
        "TIKTOKEN_CACHE_DIR",
    )
    assert snapshot(project, "data") == before
    assert leftovers(project / "data") == []


# Tracebacks: NUL bytes


@pytest.mark.parametrize(
    "fetch_params, fragment",
    [
        ({"url": "/tmp/a\0b.txt"}, "fetch.url must be text without NUL"),
        ({"sources": [{"url": "/tmp/a\0b.txt"}]}, "fetch.sources[0].url must be text without NUL"),
        ({"sources": [{"path": "stories\0"}]}, "fetch.sources[0].path must be text without NUL"),
        ({"sources": [{"url": "file:///tmp/a%00b.txt"}]}, "names a file with a NUL character (%00)"),
        ({"sources": [{"url": "file:///tmp%00/a.txt"}]}, "holds a NUL character (%00)"),
        ({"sources": [{"url": "http://127.0.0.1:9/a%00b.txt", "sha256": A_PIN}]}, "a NUL character (%00)"),
        ({"url": "/tmp/a\udcffb.txt"}, "fetch.url must be text without NUL characters or lone surrogates"),
    ],
    ids=["fetch.url", "source-url", "source-path", "file-name-%00", "file-folder-%00", "http-url-%00", "surrogate"],
)
def test_a_nul_in_a_source_path_or_url_is_one_error_line(tmp_path, fetch_params, fragment):
    project = fetch_project(tmp_path / "project", **fetch_params)
    before = snapshot(project, "data", "metrics")

    result = stage("fetch", project, CORPUS_MIRROR=str(CORPUS_DIR))

    assert_one_line_error(result, fragment)
    assert_nothing_lost(project, before)


def test_a_nul_in_the_encoding_path_is_one_error_line(tmp_path):
    project = make_project(tmp_path / "project", "encodings/a\0b.tiktoken")

    assert_one_line_error(stage("tokenize", project), "tokenize.encoding must be text without NUL")


# Tracebacks: a .tiktoken file that is not a valid BPE


def bpe(path: Path, *, drop: int | None = None, extra: list[tuple[bytes, int]] = ()) -> Path:
    """A ranks file: the 256 single bytes (but `drop`) at their own ranks, then `extra` (token, rank) lines."""
    lines = [(bytes([b]), b) for b in range(256) if b != drop] + [(b"the", 256), *extra]
    path.write_text("".join(f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in lines))
    return path


@pytest.mark.parametrize(
    "ranks, fragment",
    [
        ({"drop": ord(" ")}, "1 of the 256 single bytes are not tokens (the first: 0x20)"),
        ({"extra": [(b"he", -1)]}, "line 258 has rank -1"),
        ({"extra": [(b"he", 1 << 32)]}, "line 258 has rank 4294967296, outside 0 to 4,294,967,294"),
        ({"extra": [(b"he", (1 << 32) - 1)]}, "outside 0 to 4,294,967,294"),  # the end-of-text id would not fit
        ({"extra": [(b"he", 7)]}, "line 258 repeats the rank of an earlier line"),
        ({"extra": [(b"the", 300)]}, "line 258 repeats the token of an earlier line"),
    ],
    ids=["missing-byte", "negative", "past-32-bits", "no-room-for-end-of-text", "repeated-rank", "repeated-token"],
)
def test_a_ranks_file_that_is_not_a_valid_bpe_is_one_error_line(tmp_path, ranks, fragment):
    """Before the check: a Rust panic ("no entry found for key"), an OverflowError, a ValueError from tiktoken."""
    path = bpe(tmp_path / "bad.tiktoken", **ranks)
    project = make_project(tmp_path / "project", path)

    result = stage("tokenize", project)

    assert_one_line_error(result, str(path), "is not a valid BPE", fragment)
    assert not (project / "data" / "tokens").exists()
    assert leftovers(project / "data") == []


def test_a_valid_bpe_with_gaps_in_its_ranks_still_loads(tmp_path):
    path = bpe(tmp_path / "gaps.tiktoken", extra=[(b"he", 1000)])
    project = make_project(tmp_path / "project", path)

    result = stage("tokenize", project)

    assert result.returncode == 0, result.stderr
    assert json.loads((project / "metrics" / "tokenize.json").read_text())["vocab_size"] == 1002


# Tracebacks: an edited dataset.json


def edit_dataset_json(dataset_dir: Path, edit: Callable[[dict], None]) -> None:
    path = dataset_dir / "dataset.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def set_field(*keys, value):
    def edit(config: dict) -> None:
        for key in keys[:-1]:
            config = config[key]
        config[keys[-1]] = value

    return edit


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (set_field("dtype", value="int16"), "dtype 'int16' is not uint16"),
        (set_field("dtype", value="uint32"), "dtype 'uint32' is not uint16"),
        (set_field("stride", value=0), "stride 0 is not in [1,"),
        (set_field("stride", value=-3), "stride -3 is not in [1,"),
        (set_field("max_length", value=-1), "max_length -1 is not in [1,"),
        (set_field("max_length", value=1 << 70), "max_length 1180591620717411303424 is not in [1,"),
        (set_field("batch_size", value=0), "batch_size 0 is not in [1,"),
        (set_field("vocab_size", value=0), "vocab_size 0 is not in [1,"),
        (set_field("seed", value=-1), "seed -1 is not in [0,"),
        (set_field("val_fraction", value=1.5), "val_fraction 1.5 is not in [0, 1)"),
        (set_field("encoding", value=7), "'encoding' is missing or not str"),
        (set_field("splits", "train", "file", value="../../params.yaml"), "the train file is '../../params.yaml'"),
        (set_field("splits", "train", "num_tokens", value=-4), "the train num_tokens -4 is not in [0,"),
        (set_field("splits", "val", "num_windows", value=-1), "the val num_windows -1 is not in [0,"),
        (set_field("splits", "train", "sha256", value="zz"), "the train sha256 'zz' is not 64 hex digits"),
        (lambda config: config["splits"].pop("val"), "(val) is corrupt"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_every_field_of_an_edited_dataset_json_is_checked(chain, tmp_path, edit, fragment):
    """Before: int16 loaded GPT-2's ids past 32,767 as negative ids; a stride of 0 or less was a numpy traceback."""
    dataset_dir = copy_project(chain / "data" / "dataset", tmp_path / "dataset")
    edit_dataset_json(dataset_dir, edit)

    with pytest.raises(PipelineError) as error:
        load_dataset(dataset_dir)

    assert fragment in str(error.value) and "dvc checkout" in str(error.value)


@pytest.mark.parametrize(
    "edit, fragment",
    [(set_field("dtype", value="int16"), "dtype 'int16' is not uint16"), (set_field("stride", value=0), "stride 0")],
    ids=["int16", "stride-0"],
)
def test_embed_on_an_edited_dataset_json_is_one_error_line(chain, tmp_path, edit, fragment):
    project = copy_project(chain, tmp_path / "project")
    edit_dataset_json(project / "data" / "dataset", edit)
    before = snapshot(project, "data", "metrics")

    result = stage("embed", project)

    assert_one_line_error(result, "dataset.json is corrupt", fragment, "dvc checkout")
    assert_nothing_lost(project, before)


def test_embed_checks_ids_at_both_ends_of_the_vocabulary(chain, tmp_path):
    """A split file whose ids pass the vocabulary (the sidecar consistent with it) stops embed in one line; the
    check itself refuses an id below 0 as well as one at vocab_size or above."""
    project = copy_project(chain, tmp_path / "project")
    train = project / "data" / "dataset" / "train.bin"
    train.write_bytes(b"\xff" * train.stat().st_size)  # every id 65,535 in a vocabulary of 271

    assert_one_line_error(stage("embed", project), "holds token id 65535, outside its vocabulary of 271")
    for ids in (torch.tensor([-1, 5]), torch.tensor([0, 271])):
        with pytest.raises(PipelineError, match="outside its vocabulary of 271"):
            check_ids(ids, 271, "data/dataset")
    check_ids(torch.tensor([0, 270]), 271, "data/dataset")
    check_ids(torch.empty(0, dtype=torch.int64), 271, "data/dataset")


# Tracebacks: no space left on the device


def test_fetch_onto_a_full_filesystem_is_one_error_line(tmp_path):
    project = fetch_project(tmp_path / "project")
    with full(project / "data"):
        before = snapshot(project, "data", "metrics")

        result = stage("fetch", project, CORPUS_MIRROR=str(CORPUS_DIR))

        assert_one_line_error(result, "no space left on the device writing data/raw", "free space")
        assert_nothing_lost(project, before)


@pytest.mark.parametrize("name, output", [("tokenize", "tokens"), ("window", "windows"), ("dataset", "dataset"),
                                          ("embed", "embeddings")])  # fmt: skip
def test_every_stage_on_a_full_filesystem_is_one_error_line_and_keeps_its_output(chain, tmp_path, name, output):
    project = copy_project(chain, tmp_path / "project")
    with full(project / "data"):
        before = snapshot(project, "data", "metrics")

        result = stage(name, project)

        assert_one_line_error(result, f"no space left on the device writing data/{output}", "free space")
        assert_nothing_lost(project, before)


def test_metrics_onto_a_full_filesystem_is_one_error_line_with_no_temporary_file(chain, tmp_path):
    project = copy_project(chain, tmp_path / "project")
    with full(project / "metrics"):
        result = stage("window", project)

        assert_one_line_error(result, "no space left on the device writing metrics/window.json")
        assert leftovers(project / "metrics") == leftovers(project / "data") == []


# Tracebacks: Ctrl-C and SIGTERM


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_download_is_one_line_and_leaves_the_outputs(tmp_path, signum):
    with http_server(trickle(size=1 << 20, gap=0.01)) as base:
        project = fetch_project(tmp_path / "project", url=f"{base}/the-verdict.txt", sha256=A_PIN)
        before = snapshot(project, "data", "metrics")
        process = start_stage("fetch", project)
        wait_until(lambda: any(project.glob("data/.raw.tmp-*/the-verdict.txt")), process)  # mid-download

        process.send_signal(signum)
        _, stderr = process.communicate(timeout=WAIT_SECONDS)

    result = subprocess.CompletedProcess(process.args, process.returncode, "", stderr.decode())
    assert_one_line_error(result, "interrupted: ", "stages/fetch.py stopped", "rerun it")
    assert result.returncode == 130
    assert_nothing_lost(project, before)


def test_an_interrupted_tokenize_on_its_thread_pool_is_one_line(tmp_path, tiny_ranks):
    project = make_project(tmp_path / "project", tiny_ranks, corpus=CORPUS * 8000)  # 13 MB: seconds of encoding
    (project / "data" / "tokens").mkdir()
    (project / "data" / "tokens" / "earlier").write_text("an earlier output\n")
    before = snapshot(project, "data", "metrics")
    process = start_stage("tokenize", project)
    wait_until(lambda: any(project.glob("data/.tokens.tmp-*")), process)

    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=WAIT_SECONDS)

    assert_one_line_error(subprocess.CompletedProcess([], process.returncode, "", stderr.decode()), "interrupted")
    assert process.returncode == 130
    assert_nothing_lost(project, before)


# Silent: links out of a folder source


@pytest.fixture
def linked_folder(tmp_path) -> tuple[Path, Path]:
    """A folder source with a story, a link to another story in it, and story.txt: a link to a file outside."""
    secret = tmp_path / "secret"
    secret.write_text("root:$6$not-for-the-remote\n")
    folder = tmp_path / "stories"
    folder.mkdir()
    (folder / "a.txt").write_text("a story\n")
    (folder / "again.txt").symlink_to("a.txt")  # inside: fine
    (folder / "story.txt").symlink_to(secret)
    return folder, secret


def test_a_link_out_of_a_folder_source_is_refused_by_default(tmp_path, linked_folder):
    folder, secret = linked_folder
    project = fetch_project(tmp_path / "project", sources=[{"path": str(folder)}])
    before = snapshot(project, "data", "metrics")

    result = stage("fetch", project, CORPUS_MIRROR=str(CORPUS_DIR))

    assert_one_line_error(result, str(folder / "story.txt"), f"links to {secret}", "fetch.allow_outside_symlinks")
    assert_nothing_lost(project, before)


def test_a_link_out_of_a_folder_source_is_copied_when_allowed(tmp_path, linked_folder):
    folder, secret = linked_folder
    project = fetch_project(tmp_path / "project", sources=[{"path": str(folder)}], allow_outside_symlinks=True)

    result = stage("fetch", project, CORPUS_MIRROR=str(CORPUS_DIR))

    assert result.returncode == 0, result.stderr
    stored = project / "data" / "raw" / "stories"
    assert sorted(p.name for p in stored.iterdir()) == ["a.txt", "again.txt", "story.txt"]
    assert (stored / "story.txt").read_bytes() == secret.read_bytes() and not (stored / "story.txt").is_symlink()


# Silent: UTF-16 read as NUL-interleaved text


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le"])
def test_a_document_that_is_mostly_nul_is_one_error_line_naming_it(tmp_path, tiny_ranks, encoding):
    project = make_project(tmp_path / "project", tiny_ranks)
    (project / "data" / "raw" / "notes.txt").write_bytes(CORPUS.encode(encoding))  # no byte-order mark

    result = stage("tokenize", project)

    assert_one_line_error(result, "data/raw/notes.txt is mostly NUL characters", "iconv -f UTF-16LE -t UTF-8")
    assert not (project / "data" / "tokens").exists()
    assert leftovers(project / "data") == []


def test_the_odd_nul_in_prose_is_still_text(tmp_path, tiny_ranks):
    project = make_project(tmp_path / "project", tiny_ranks, corpus="the\0cat\0" + CORPUS.replace(".", ".\0"))

    result = stage("tokenize", project)

    assert result.returncode == 0, result.stderr


# Silent: the fetch manifest, recomputed


def documented_manifest_command() -> str:
    """The command docs/reliability.md gives to recompute the fetch manifest's sha256."""
    text = (ROOT / "docs" / "reliability.md").read_text()
    return re.search(r"```bash\n\s*(\(cd data/raw .*?)\n\s*```", text, re.S)[1]


NAMES = ["line\nbreak.txt", "back\\slash.txt", "two  spaces.txt", "café.txt", "-dash.txt", "z/deeper.txt"]


def test_the_documented_manifest_command_gives_the_metrics_sha256_for_any_name(tmp_path):
    folder = tmp_path / "odd names"
    for name in NAMES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"the text of {name}\n")
    project = fetch_project(tmp_path / "project", sources=[{"path": str(folder)}])
    assert stage("fetch", project, CORPUS_MIRROR=str(CORPUS_DIR)).returncode == 0
    metrics = json.loads((project / "metrics" / "fetch.json").read_text())
    assert metrics["num_documents"] == 1 + len(NAMES)

    documented = subprocess.run(["bash", "-c", documented_manifest_command()], cwd=project, capture_output=True)
    # What the docs gave before: sha256sum escapes a name holding a newline or a backslash.
    earlier = "(cd data/raw && find * -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum)"
    before = subprocess.run(["bash", "-c", earlier], cwd=project, capture_output=True)

    assert documented.returncode == 0, documented.stderr
    assert documented.stdout.decode().split()[0] == metrics["sha256"]
    assert before.stdout.decode().split()[0] != metrics["sha256"]


# Silent: messages that quote a hostile value in full


def alias_configs(project: Path) -> None:
    """sweep.configs as a YAML alias of an alias ... (8,192 pairs once expanded, under the expansion limit)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    del params["sweep"]
    aliases = "".join(f"  l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 8)}]\n" for n in range(1, 5))
    (project / "params.yaml").write_text(
        "anchors:\n  l0: &l0 [[4, 1], [4, 2]]\n" + aliases + yaml.safe_dump(params) + "sweep:\n  configs: [*l4, [4]]\n"
    )


@pytest.mark.parametrize(
    "name, hostile",
    [
        ("sweep", alias_configs),
        ("window", lambda project: set_params(project, {"window": {"k" * 1_000_000: 1}})),
        ("fetch", lambda project: set_params(project, {"fetch": {"url": "/" + "u" * 1_000_000 + ".txt"}})),
        ("fetch", lambda project: set_params(project, {"fetch": {"sources": [{"path": "p" * 1_000_000}]}})),
        ("tokenize", lambda project: set_params(project, {"tokenize": {"encoding": "e" * 1_000_000 + ".tiktoken"}})),
    ],
    ids=["alias-in-sweep.configs", "unknown-key", "fetch.url", "source-path", "encoding-path"],
)
def test_an_error_quoting_a_hostile_value_stays_one_short_line(chain, tmp_path, name, hostile):
    project = copy_project(chain, tmp_path / "project")
    hostile(project)

    result = stage(name, project, CORPUS_MIRROR=str(CORPUS_DIR))

    assert_one_line_error(result)
    assert len(result.stderr) < MAX_MESSAGE_CHARS + 100


def test_params_whose_aliases_expand_past_the_limit_are_refused_by_every_stage(chain, tmp_path):
    """DVC expands such a file until memory runs out (test_reliability_dvc.py); a stage refuses it at once."""
    project = copy_project(chain, tmp_path / "project")
    levels = "".join(f"  b{n}: &b{n} [{', '.join([f'*b{n - 1}'] * 9)}]\n" for n in range(1, 10))
    with open(project / "params.yaml", "a") as params:
        params.write("bomb:\n  b0: &b0 [x, x, x, x, x, x, x, x, x]\n" + levels)

    for name in ("fetch", "window"):
        assert_one_line_error(stage(name, project), "params.yaml holds over 100,000 values", "YAML aliases")


# Silent: leftovers of killed runs


def test_every_stage_run_clears_the_leftovers_of_dead_runs_and_only_those(chain, tmp_path):
    project = copy_project(chain, tmp_path / "project")
    dead, alive = dead_pid(), os.getpid()
    (project / "data" / f".raw.tmp-{dead}" / "big").mkdir(parents=True)  # a killed fetch, 52 MB in the issue
    (project / "data" / f".tokens.old-{dead}").mkdir()
    (project / "metrics" / f".fetch.json.tmp-{dead}").write_text("{")
    (project / "data" / f".raw.tmp-{alive}").mkdir()  # a run still going: not ours to remove
    (project / "data" / ".keep.tmp-notapid").mkdir()  # not a leftover's name

    result = stage("window", project)  # any stage: window does not write data/raw or data/tokens

    assert result.returncode == 0, result.stderr
    assert leftovers(project / "data") == [f".raw.tmp-{alive}"]
    assert leftovers(project / "metrics") == []
    assert (project / "data" / ".keep.tmp-notapid").is_dir()


# Silent: an encoding file DVC cannot see


def test_under_dvc_an_encoding_file_outside_encodings_is_refused(tmp_path, tiny_ranks):
    """DVC sets DVC_STAGE for every command it runs; by hand (no DVC_STAGE) any path works, as the tests use it."""
    project = make_project(tmp_path / "project", tiny_ranks)

    result = stage("tokenize", project, DVC_STAGE="tokenize")

    assert_one_line_error(result, f"tokenize.encoding {tiny_ranks} is outside encodings/", "move it into encodings/")

    (project / "encodings").mkdir()
    write_ranks_file(project / "encodings" / "tiny.tiktoken")
    set_params(project, {"tokenize": {"encoding": "encodings/tiny.tiktoken"}})
    result = stage("tokenize", project, DVC_STAGE="tokenize")
    assert result.returncode == 0, result.stderr
