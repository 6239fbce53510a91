"""Interruptions and concurrency, with the real `dvc repro` on a corpus big enough to catch a stage mid-run.

The corpus is tinyshakespeare from ../shared repeated to about 20 MB (GPT-2 takes a few seconds on it),
written here and pinned in the repo's fetch params. A stage builds its output in a `.NAME.tmp-PID` sibling
and renames it into place (stages.common.output_dir), so the test waits for that sibling to appear and
SIGKILLs the PID in its name: the stage is then caught in the act, whatever its speed.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, SHARED
from dvc_project import clone, dvc, outputs, pipeline_env, popen_dvc, project_repo, set_params, sh

SHAKESPEARE = SHARED / "corpus" / "tinyshakespeare.txt"
REPEATS = 18  # about 20 MB
TARGET = "dataset"  # the stages up to the two that are killed; the others would only add minutes on 20 MB
# DVC's two lock errors: the repo lock (held while a repro plans and records) and the lock on the paths a
# running stage reads and writes.
LOCK_MESSAGE = re.compile(r"Unable to acquire lock|'[^']+' is busy, it is being blocked by")


@pytest.fixture(scope="module")
def big_repo(tmp_path_factory) -> Path:
    """The project in a git repo whose fetch stage is pinned to the big corpus; nothing reproduced yet."""
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE.relative_to(ROOT.parent)} is not beside the project")
    base = tmp_path_factory.mktemp("interrupt")
    corpus = base / "shakespeare-x18.txt"
    corpus.write_bytes(SHAKESPEARE.read_bytes() * REPEATS)
    repo = project_repo(base / "origin")
    set_params(repo, "fetch", url=str(corpus), sha256=hashlib.sha256(corpus.read_bytes()).hexdigest())
    sh(repo, "git", "commit", "-qam", "the big corpus")
    return repo


@pytest.fixture(scope="module")
def contested(big_repo) -> dict:
    """A `dvc repro` (A) in a fresh clone, and a second one (B) started in the same clone while A runs."""
    repo = clone(big_repo, big_repo.parent / "contested")
    first = popen_dvc(repo, repo.parent / "first.log", "repro", TARGET)
    wait_for(lambda: "Running stage" in (repo.parent / "first.log").read_text(), first)
    second = dvc(repo, "repro", TARGET, check=False)
    first_running_when_second_ended = first.poll() is None
    first.wait(timeout=600)
    return {
        "repo": repo,
        "first": (first.returncode, (repo.parent / "first.log").read_text()),
        "second": second,
        "first_running_when_second_ended": first_running_when_second_ended,
    }


def wait_for(condition, process: subprocess.Popen) -> None:
    """Poll `condition` until it holds; fail if `process` ends first."""
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"{' '.join(map(str, process.args))} ended (status {process.returncode}) before the test")
        time.sleep(0.001)


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
def test_killed_stage_leaves_the_old_output_whole(contested, stage, tmp_path):
    """Run by hand (no DVC to remove it first), a killed stage leaves its previous output exactly as it was."""
    repo = tmp_path / "repo"
    sh(tmp_path, "cp", "-a", str(contested["repo"]), str(repo))  # -a keeps dataset's hard link as in a real run
    output = repo / "data" / ("tokens" if stage == "tokenize" else "dataset")
    before = {p.name: p.read_bytes() for p in output.iterdir()}
    set_params(repo, "dataset", batch_size=16)  # so the dataset stage would write different bytes
    command = [sys.executable, "-m", f"stages.{stage}"]
    process = subprocess.Popen(command, cwd=repo, env=pipeline_env(), stderr=subprocess.DEVNULL)
    kill_while_building(process, output)
    assert process.returncode == -signal.SIGKILL
    assert {p.name: p.read_bytes() for p in output.iterdir()} == before


def test_repro_after_killed_tokenize_and_dataset_equals_an_uninterrupted_run(big_repo, contested):
    repo = clone(big_repo, big_repo.parent / "killed")
    data = repo / "data"

    repro = popen_dvc(repo, repo.parent / "killed-1.log", "repro", TARGET)
    leftover = kill_while_building(repro, data / "tokens")
    assert repro.returncode != 0
    assert leftover.is_dir(), "the stage was not caught mid-run"
    assert not (data / "tokens").exists(), "a partial token array sat at the output path"

    repro = popen_dvc(repo, repo.parent / "killed-2.log", "repro", TARGET)
    leftover = kill_while_building(repro, data / "dataset")
    assert repro.returncode != 0
    assert leftover.is_dir(), "the stage was not caught mid-run"
    assert not (data / "dataset").exists(), "a partial dataset sat at the output path"

    dvc(repo, "repro", TARGET)
    assert not list(data.glob(".*.tmp-*")), "the killed runs' temporary folders were not cleared"
    assert outputs(repo) == outputs(contested["repo"])
