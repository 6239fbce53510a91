"""The project as a git repo in a temporary folder, for tests that run the real `dvc repro` in clones of it.

DVC and git run with the committed test data (tests/data: the corpus as $CORPUS_MIRROR, tiktoken's GPT-2
cache), so nothing is downloaded, and with this interpreter's python first on PATH, as in an activated venv
(dvc.yaml runs `python stages/<script>.py <paths>`). The stages import this checkout's llmpipe, which the
repos hold a copy of, as conftest's run_stage does, wherever the venv's editable install points. Tests edit a
repo's params with conftest's set_params.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import CORPUS_DIR, ROOT, TIKTOKEN_CACHE

__all__ = [
    "clone",
    "dvc",
    "outputs",
    "pipeline_env",
    "popen",
    "popen_dvc",
    "project_repo",
    "put_back",
    "reproduced",
    "sh",
    "stop",
]


def pipeline_env() -> dict:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "TIKTOKEN_CACHE_DIR": str(TIKTOKEN_CACHE),
        "CORPUS_MIRROR": str(CORPUS_DIR),
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }


def sh(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=repo, env=pipeline_env(), capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh(repo, sys.executable, "-m", "dvc", *args, check=check)


def reproduced(output: str) -> set[str]:
    """Stages a `dvc repro` ran or restored from the run-cache (as opposed to skipped as unchanged)."""
    return set(re.findall(r"Running stage '(\w+)'", output)) | set(re.findall(r"Stage '(\w+)' is cached", output))


def project_repo(dest: Path) -> Path:
    """A git repo at `dest` holding the project's files (tracked, and new ones not ignored), committed."""
    names = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, names):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    sh(dest, "git", "init", "-q")
    sh(dest, "git", "add", "-A")
    sh(dest, "git", "commit", "-qm", "copy of the project")
    return dest


def clone(repo: Path, dest: Path) -> Path:
    """A fresh clone: git files only, no DVC cache, no outputs."""
    sh(repo.parent, "git", "clone", "-q", str(repo), str(dest))
    return dest


def popen(command: list[str], repo: Path, **kwargs) -> subprocess.Popen:
    """Start `command` in `repo` in the background, as the leader of a new process group (see stop)."""
    return subprocess.Popen(command, cwd=repo, env=pipeline_env(), start_new_session=True, **kwargs)


def popen_dvc(repo: Path, log: Path, *args: str) -> subprocess.Popen:
    """Start `dvc <args>` in the background, its stdout and stderr going to `log`."""
    with open(log, "wb") as out:
        return popen([sys.executable, "-m", "dvc", *args], repo, stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> None:
    """Kill what `process` (started by popen) still runs, the stage it started too, and reap it.

    For fixtures' teardown: a test that failed half-way leaves no `dvc repro` running behind it.
    """
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # the group is gone: the process and all it started have ended
        pass
    process.wait(timeout=60)


def outputs(repo: Path) -> dict[str, bytes]:
    """Every file the pipeline writes (data/ and metrics/) and dvc.lock, by path, with its bytes."""
    files = [repo / "dvc.lock", *(p for folder in ("data", "metrics") for p in sorted((repo / folder).rglob("*")))]
    return {str(p.relative_to(repo)): p.read_bytes() for p in files if p.is_file()}


@contextmanager
def put_back(repo: Path) -> Iterator[Path]:
    """Around a fixture's yield, for a test that changes params and reruns stages in a repo other tests use too:
    afterwards params.yaml, dvc.lock, metrics/ and data/ are as they were before, however the test ended."""
    params = (repo / "params.yaml").read_bytes()
    before = outputs(repo)
    try:
        yield repo
    finally:
        (repo / "params.yaml").write_bytes(params)
        for metric in (repo / "metrics").rglob("*"):
            if metric.is_file() and str(metric.relative_to(repo)) not in before:
                metric.unlink()
        for name, data in before.items():
            if not name.startswith("data/"):  # data/ holds DVC's outputs: checked out below from dvc.lock
                (repo / name).write_bytes(data)
        dvc(repo, "checkout", "--force")
        assert outputs(repo) == before, "the repo could not be put back as it was"
