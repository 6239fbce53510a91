"""What the tests share: the project's paths and committed test data, params, running a stage, the stage chain.

Everything a test needs is under tests/data (the book's corpus, GPT-2's BPE files), so the suite runs the
same on a fresh clone with no network and nothing beside the project.
"""

from __future__ import annotations

import base64
import copy
import importlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
CORPUS_DIR = DATA / "corpus"
VERDICT = CORPUS_DIR / "the-verdict.txt"
VERDICT_SHA256 = "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"
TIKTOKEN_CACHE = DATA / "tiktoken-cache"

# A few merges over the 256 single bytes, enough to make multi-byte tokens out of English text.
TINY_MERGES = [b"th", b"he", b"the", b" t", b" the", b"in", b"an", b"er", b"on", b" a", b"re", b"nd", b"and", b" and"]


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and two threads slow down many times on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def gpt2_cache(monkeypatch) -> Path:
    """Point tiktoken at the committed GPT-2 files."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))
    return TIKTOKEN_CACHE


def write_ranks_file(path: Path, merges: list[bytes] = TINY_MERGES) -> Path:
    """A .tiktoken ranks file: every single byte, then `merges` in rank order."""
    tokens = [bytes([b]) for b in range(256)] + merges
    path.write_text("".join(f"{base64.b64encode(t).decode()} {rank}\n" for rank, t in enumerate(tokens)))
    return path


@pytest.fixture
def tiny_ranks(tmp_path) -> Path:
    return write_ranks_file(tmp_path / "tiny.tiktoken")


def set_params(directory: Path, overrides: dict | None = None) -> dict:
    """The one way tests edit params: `directory`/params.yaml (the project's own when absent), each section
    updated by `overrides` ({"window": {"stride": 2}}), written back. Returns all params."""
    path = directory / "params.yaml"
    params = yaml.safe_load((path if path.exists() else ROOT / "params.yaml").read_text())
    for section, values in (overrides or {}).items():
        params.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return copy.deepcopy(params)


def stage_command(name: str) -> list[str]:
    """The command dvc.yaml runs for stage `name`, with this interpreter and the script's absolute path."""
    cmd = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][name]["cmd"]
    python, script, *paths = shlex.split(cmd)
    return [sys.executable, str(ROOT / script), *paths]


def stage_module(name: str):
    """The module of stage `name`'s script (stages.tokenize_corpus for tokenize), to call its main in-process."""
    script = Path(stage_command(name)[1])
    return importlib.import_module(f"stages.{script.stem}")


def run_stage(name: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run stage `name` in `cwd` as dvc.yaml does."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(stage_command(name), cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)


def run_ok(name: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a stage that is expected to succeed; fail the test with its stderr if it does not."""
    result = run_stage(name, cwd)
    assert result.returncode == 0, f"stage {name} failed:\n{result.stderr}"
    return result


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """A bad input ends in a non-zero exit and one `error:` line naming the problem, no traceback."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# The stage chain: a small project on which tokenize -> window -> dataset -> embed ran once.

CORPUS = """\
The lighthouse stood at the end of a narrow spit of rock, and for forty years the same family had kept
its lamp. Every evening the keeper climbed the spiral stair, trimmed the wick, polished the great lens
and wound the clockwork that turned it. Ships that passed in the night saw only the slow white beam, and
few of the sailors ever thought about the hands that kept it turning.

In the winter the storms came from the north. The waves broke over the rock and the spray reached the
gallery, a hundred feet above the sea. The keeper and his daughter listened to the wind in the chimney
and counted the seconds between the flashes, as if the light might fail whenever they stopped counting.
It never did. The oil was measured, the glass was clean, and the log was written up before dawn.

When the daughter was grown she learned to read the weather from the colour of the sky and the shape of
the clouds. She could tell a coming gale by the way the gulls flew low over the water, and she knew
which of the fishing boats would try to reach the harbour before it broke. Some evenings she rowed out
to the mainland for letters and bread, and came back with the news of the town: who had married, who had
left for the city, and which of the old boats had been sold for timber.

Years later an engineer arrived with plans for an electric lamp and a machine that would turn the lens
without anyone to wind it. The keeper read the plans twice, folded them carefully, and said nothing.
That night he climbed the stair as he always had, and the beam went out across the dark water, steady
and patient, as though it could not imagine being anything other than what it was.
"""

# The chain's parameters: small enough to be quick, chosen so that no two of them coincide.
CHAIN_WINDOW = {"max_length": 6, "stride": 3}
CHAIN_DATASET = {"batch_size": 5, "shuffle": True, "seed": 123, "val_fraction": 0}
CHAIN_EMBED = {"dim": 16, "context_length": 8, "seed": 123}
CHAIN_STAGES = ("tokenize", "window", "dataset", "embed")


def make_project(directory: Path, ranks_path: Path, overrides: dict | None = None, corpus: str = CORPUS) -> Path:
    """A project folder with data/raw/corpus.txt and params.yaml using the ranks file as tokenize.encoding."""
    raw = directory / "data" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "corpus.txt").write_text(corpus, encoding="utf-8")
    set_params(directory, {"tokenize": {"encoding": str(ranks_path)}, **(overrides or {})})
    return directory


@pytest.fixture(scope="session")
def chain(tmp_path_factory) -> Path:
    """A project on which tokenize, window, dataset and embed have run once, with the tiny BPE.

    Read it, never modify it: tests that change anything work on `chain_copy`.
    """
    base = tmp_path_factory.mktemp("chain")
    ranks = write_ranks_file(base / "tiny.tiktoken")
    project = make_project(
        base / "project", ranks, {"window": CHAIN_WINDOW, "dataset": CHAIN_DATASET, "embed": CHAIN_EMBED}
    )
    for stage in CHAIN_STAGES:
        run_ok(stage, project)
    return project


def copy_project(source: Path, dest: Path) -> Path:
    """A private copy of a built project or one of its folders, safe to modify."""
    return Path(shutil.copytree(source, dest, dirs_exist_ok=True))


@pytest.fixture
def chain_copy(chain, tmp_path) -> Path:
    """A private copy of the chain, safe to modify."""
    return copy_project(chain, tmp_path / "project")


def snapshot(directory: Path, *relative: str) -> dict[str, bytes]:
    """The bytes of every file under each relative path (file or folder), to check nothing changed."""
    files = {}
    for rel in relative:
        path = directory / rel
        for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            files[str(file.relative_to(directory))] = file.read_bytes()
    assert files, f"nothing to snapshot under {relative}"
    return files


class _GivenIds:
    """A stand-in tokenizer for the book's GPTDatasetV1: its "text" is already a list of ids."""

    def encode(self, ids: list[int], allowed_special=None) -> list[int]:
        return ids


def book_windows(ids: list[int], max_length: int, stride: int) -> tuple[list[list[int]], list[list[int]]]:
    """The inputs and targets of the book's own GPTDatasetV1 (llms_from_scratch.ch02) over `ids`."""
    from llms_from_scratch.ch02 import GPTDatasetV1

    dataset = GPTDatasetV1(ids, _GivenIds(), max_length, stride)
    return [t.tolist() for t in dataset.input_ids], [t.tolist() for t in dataset.target_ids]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def s3_server(monkeypatch, tmp_path):
    """moto's S3 server on 127.0.0.1, with a bucket; DVC and boto3 reach it with dummy credentials."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "team")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "team")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    port = free_port()
    log = open(tmp_path / "moto.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:  # the server takes a moment to listen
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "moto.log").read_text()
                time.sleep(0.2)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="team-cache")
        yield endpoint, s3
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
