"""Interruptions and concurrency, with the real `dvc repro` on a corpus big enough to catch a stage mid-run.

The corpus is the book's story from tests/data repeated to about 20 MB (GPT-2 takes a few seconds on it),
written here and pinned in the repo's fetch params. A stage builds its output in a `.NAME.tmp-PID` sibling
and renames it into place (llmpipe.files.output_dir), so the test waits for that sibling to appear and
SIGKILLs the PID in its name: the stage is then caught in the act, whatever its speed. Every wait has a
deadline, and whatever a test started in the background is killed in its fixture's teardown.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import VERDICT, set_params, stage_command
from dvc_project import clone, dvc, outputs, popen, popen_dvc, project_repo, sh, stop

pytestmark = pytest.mark.e2e

REPEATS = 1000  # about 20 MB
TARGET = "dataset"  # the stages up to the two that are killed; the others would only add minutes on 20 MB
# DVC's two lock errors: the repo lock (held while a repro plans and records) and the lock on the paths a
# running stage reads and writes.
LOCK_MESSAGE = re.compile(r"Unable to acquire lock|'[^']+' is busy, it is being blocked by")
WAIT_SECONDS = 300  # the longest any wait for a stage lasts: on 20 MB each stage takes seconds


@pytest.fixture(scope="module")
def big_repo(tmp_path_factory) -> Path:
    """The project in a git repo whose fetch stage is pinned to the big corpus; nothing reproduced yet."""
    base = tmp_path_factory.mktemp("interrupt")
    corpus = base / f"the-verdict-x{REPEATS}.txt"
    corpus.write_bytes(VERDICT.read_bytes() * REPEATS)
    repo = project_repo(base / "origin")
    set_params(repo, {"fetch": {"url": str(corpus), "sha256": hashlib.sha256(corpus.read_bytes()).hexdigest()}})
    sh(repo, "git", "commit", "-qam", "the big corpus")
    return repo


@pytest.fixture(scope="module")
def contested(big_repo) -> Iterator[dict]:
    """A `dvc repro` (A) in a fresh clone, and a second one (B) started in the same clone while A runs."""
    repo = clone(big_repo, big_repo.parent / "contested")
    first = popen_dvc(repo, repo.parent / "first.log", "repro", TARGET)
    try:
        wait_for(lambda: "Running stage" in (repo.parent / "first.log").read_text(), first)
        second = dvc(repo, "repro", TARGET, check=False)
        first_running_when_second_ended = first.poll() is None
        first.wait(timeout=600)
        yield {
            "repo": repo,
            "first": (first.returncode, (repo.parent / "first.log").read_text()),
            "second": second,
            "first_running_when_second_ended": first_running_when_second_ended,
        }
    finally:
        stop(first)


@pytest.fixture
def background() -> Iterator[list[subprocess.Popen]]:
    """The processes a test starts in the background (with dvc_project.popen): killed after it if still running."""
    processes: list[subprocess.Popen] = []
    yield processes
    for process in processes:
        stop(process)


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, limit_seconds: float = WAIT_SECONDS) -> None:
    """Poll `condition` until it holds; fail if `process` ends first, or `limit_seconds` pass."""
    deadline = time.monotonic() + limit_seconds
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"{' '.join(map(str, process.args))} ended (status {process.returncode}) before the test")
        if time.monotonic() > deadline:
            pytest.fail(f"{' '.join(map(str, process.args))} did not get there within {limit_seconds} s")
        time.sleep(0.001)  # the stage may build its output in well under a second: look often


def kill_while_building(process: subprocess.Popen, output: Path) -> Path:
    """SIGKILL the stage as soon as its temporary sibling of `output` exists; return that sibling."""
    prefix = f".{output.name}.tmp-"
    found: list[Path] = []

    def building() -> bool:
        found[:] = output.parent.glob(f"{prefix}*") if output.parent.is_dir() else []
        return bool(found)

    wait_for(building, process)
    os.kill(int(found[0].name.removeprefix(prefix)), signal.SIGKILL)
    process.wait(timeout=600)
    return found[0]


def test_second_repro_fails_fast_on_the_lock_and_the_first_completes(contested):
    second = contested["second"]
    assert second.returncode != 0
    assert LOCK_MESSAGE.search(second.stderr), second.stderr
    assert contested["first_running_when_second_ended"], "the second repro waited for the first instead of failing"
    status, log = contested["first"]
    assert status == 0, log
    assert "Data and pipelines are up to date." in dvc(contested["repo"], "status", TARGET).stdout


@pytest.mark.parametrize("stage", ["tokenize", "dataset"])
def test_killed_stage_leaves_the_old_output_whole(contested, stage, tmp_path, background):
    """Run by hand (no DVC to remove it first), a killed stage leaves its previous output exactly as it was."""
    repo = tmp_path / "repo"
    sh(tmp_path, "cp", "-a", str(contested["repo"]), str(repo))  # -a keeps dataset's hard link as in a real run
    output = repo / "data" / ("tokens" if stage == "tokenize" else "dataset")
    before = {p.name: p.read_bytes() for p in output.iterdir()}
    set_params(repo, {"dataset": {"batch_size": 16}})  # so the dataset stage would write different bytes
    process = popen(stage_command(stage), repo, stderr=subprocess.DEVNULL)  # as dvc.yaml's cmd runs it
    background.append(process)
    kill_while_building(process, output)
    assert process.returncode == -signal.SIGKILL
    assert {p.name: p.read_bytes() for p in output.iterdir()} == before


def test_repro_after_killed_tokenize_and_dataset_equals_an_uninterrupted_run(big_repo, contested, tmp_path, background):
    repo = clone(big_repo, tmp_path / "killed")
    data = repo / "data"

    repro = popen_dvc(repo, tmp_path / "killed-1.log", "repro", TARGET)
    background.append(repro)
    leftover = kill_while_building(repro, data / "tokens")
    assert repro.returncode != 0
    assert leftover.is_dir(), "the stage was not caught mid-run"
    assert not (data / "tokens").exists(), "a partial token array sat at the output path"

    repro = popen_dvc(repo, tmp_path / "killed-2.log", "repro", TARGET)
    background.append(repro)
    leftover = kill_while_building(repro, data / "dataset")
    assert repro.returncode != 0
    assert leftover.is_dir(), "the stage was not caught mid-run"
    assert not (data / "dataset").exists(), "a partial dataset sat at the output path"

    dvc(repo, "repro", TARGET)
    assert not list(data.glob(".*.tmp-*")), "the killed runs' temporary folders were not cleared"
    assert outputs(repo) == outputs(contested["repo"])
