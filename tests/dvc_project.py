"""The project as a git repo in a temporary folder, for tests that run the real `dvc repro` in clones of it.

DVC and git run with the corpus mirror and tiktoken cache from ../shared, and this interpreter's python
first on PATH, as in an activated venv (dvc.yaml runs `python -m stages.x`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, SHARED, TIKTOKEN_CACHE, VERDICT

__all__ = ["clone", "dvc", "outputs", "pipeline_env", "popen_dvc", "project_repo", "reproduced", "set_params", "sh"]


def pipeline_env() -> dict:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "TIKTOKEN_CACHE_DIR": str(TIKTOKEN_CACHE),
        "CORPUS_MIRROR": str(SHARED / "corpus"),
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


def require_shared() -> None:
    if not VERDICT.is_file() or not TIKTOKEN_CACHE.is_dir():
        pytest.skip("../shared (the real corpus and tiktoken's GPT-2 cache) is not beside the project")


def project_repo(dest: Path) -> Path:
    """A git repo at `dest` holding the project's files (tracked, and new ones not ignored), committed."""
    require_shared()
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


def set_params(repo: Path, section: str, **values) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def popen_dvc(repo: Path, log: Path, *args: str) -> subprocess.Popen:
    """Start `dvc <args>` in the background, its stdout and stderr going to `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "dvc", *args], cwd=repo, env=pipeline_env(), stdout=out, stderr=subprocess.STDOUT
        )


def outputs(repo: Path) -> dict[str, bytes]:
    """Every file the pipeline writes (data/ and metrics/) and dvc.lock, by path, with its bytes."""
    files = [repo / "dvc.lock", *(p for folder in ("data", "metrics") for p in sorted((repo / folder).rglob("*")))]
    return {str(p.relative_to(repo)): p.read_bytes() for p in files if p.is_file()}
