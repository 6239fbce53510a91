"""Reliability with the real `dvc`: what a failure leaves behind, and DVC's own behaviours (docs/reliability.md).

Each test works in its own clone of the project (tests/dvc_project.py), with the committed corpus as
$CORPUS_MIRROR, and runs only the stages it needs (fetch, tokenize). The full filesystem is a small tmpfs; the
slow server is test_reliability's, on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_MERGES, set_params, write_ranks_file
from dvc_project import clone, outputs, pipeline_env, project_repo, sh
from test_reliability import http_server, leftovers, tmpfs, trickle

pytestmark = pytest.mark.e2e

DVC_MEMORY = 400 << 20  # address space for `dvc`: ample for the project's params.yaml, far short of a bomb's


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> Path:
    """The project as a git repo with fetch and tokenize reproduced and committed: what each test clones."""
    repo = project_repo(tmp_path_factory.mktemp("reliability") / "origin")
    dvc(repo, "repro", "tokenize")
    commit(repo)
    return repo


def dvc(repo: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """`dvc <args>` in `repo` as dvc_project runs it, with `env` over the pipeline's environment."""
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, env={**pipeline_env(), **env}, capture_output=True, text=True
    )
    if check and result.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def commit(repo: Path) -> None:
    if sh(repo, "git", "status", "--porcelain").stdout:
        sh(repo, "git", "add", "-A")
        sh(repo, "git", "commit", "-qm", "reproduce")


def reproduced_clone(origin: Path, dest: Path) -> Path:
    """A clone of origin with fetch and tokenize checked out of its run-cache, as committed."""
    repo = clone(origin, dest)
    sh(repo, "cp", "-a", str(origin / ".dvc" / "cache"), str(repo / ".dvc" / "cache"))
    dvc(repo, "checkout", "fetch", "tokenize")
    return repo


def not_in(repo: Path, where: str, *targets: str) -> list[str]:
    """The folders and files of `targets` missing from the cache (where="cache") or the default remote ("remote"),
    file by file: the check docs/reliability.md gives (`dvc status --cloud` misses a lost file)."""
    flags = ["--not-in-remote"] if where == "remote" else []
    result = dvc(repo, "data", "status", *flags, "--granular", "--json", *targets)
    return sorted(json.loads(result.stdout).get(f"not_in_{where}", []))


# Metrics on failure


def test_a_failed_stage_loses_its_metrics_and_git_checkout_restores_them(origin, tmp_path):
    """DVC removes a stage's outputs, its uncached metrics too, before running it; `dvc checkout` restores the
    cached outputs but not the metrics; `git checkout` does, and the workspace is as committed."""
    repo = reproduced_clone(origin, tmp_path / "repo")
    before = outputs(repo)
    wrong = tmp_path / "wrong-mirror"
    wrong.mkdir()
    (wrong / "the-verdict.txt").write_text("not the pinned corpus\n")

    failed = dvc(repo, "repro", "-f", "fetch", check=False, CORPUS_MIRROR=str(wrong))

    assert failed.returncode != 0
    assert "error: " in failed.stderr and "but fetch.sha256 pins" in failed.stderr
    assert not (repo / "metrics" / "fetch.json").exists(), "DVC keeps the metrics now: update docs/reliability.md"
    assert not (repo / "data" / "raw").exists()
    assert leftovers(repo / "data") == []

    dvc(repo, "checkout", "fetch")
    assert (repo / "data" / "raw").is_dir() and not (repo / "metrics" / "fetch.json").exists()
    sh(repo, "git", "checkout", "--", "metrics/fetch.json")

    assert outputs(repo) == before
    assert "Data and pipelines are up to date." in dvc(repo, "status", "fetch", "tokenize").stdout
    assert sh(repo, "git", "status", "--porcelain").stdout == ""


# Leftovers of a killed run


def test_a_killed_runs_leftover_outlives_a_run_cache_restore_and_goes_with_the_next_stage_run(origin, tmp_path):
    repo = clone(origin, tmp_path / "repo")
    sh(repo, "cp", "-a", str(origin / ".dvc" / "cache"), str(repo / ".dvc" / "cache"))
    with http_server(trickle(size=1 << 20, gap=0.01)) as base:
        set_params(repo, {"fetch": {"url": f"{base}/the-verdict.txt"}})
        log = tmp_path / "killed.log"
        with open(log, "wb") as out:
            repro = subprocess.Popen(
                [sys.executable, "-m", "dvc", "repro", "fetch"],
                cwd=repo,
                env={**pipeline_env(), "CORPUS_MIRROR": ""},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 60
            while not (found := list((repo / "data").glob(".raw.tmp-*"))):
                assert repro.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.005)
            os.kill(int(found[0].name.removeprefix(".raw.tmp-")), signal.SIGKILL)  # the stage, mid-download
            repro.wait(timeout=60)
        finally:
            if repro.poll() is None:
                os.killpg(repro.pid, signal.SIGKILL)
                repro.wait()
    assert repro.returncode != 0
    assert leftovers(repo / "data") == [found[0].name]

    sh(repo, "git", "checkout", "--", "params.yaml")
    restored = dvc(repo, "repro", "fetch")
    assert "Running stage 'fetch'" not in restored.stdout, "fetch ran: the test no longer restores from the cache"
    assert leftovers(repo / "data") == [found[0].name], "DVC cleared it: update docs/reliability.md"

    set_params(repo, {"tokenize": {"literal_endoftext": "token"}})  # new params: tokenize runs
    ran = dvc(repo, "repro", "tokenize")
    assert "Running stage 'tokenize'" in ran.stdout
    assert leftovers(repo / "data") == []


# An encoding file tracked by DVC


def test_an_edit_to_the_encoding_file_reruns_tokenize(origin, tmp_path):
    repo = reproduced_clone(origin, tmp_path / "repo")
    ranks = write_ranks_file(repo / "encodings" / "tiny.tiktoken")
    set_params(repo, {"tokenize": {"encoding": "encodings/tiny.tiktoken"}})
    dvc(repo, "repro", "tokenize")
    assert "Data and pipelines are up to date." in dvc(repo, "status", "tokenize").stdout
    index = (repo / "data" / "tokens" / "index.json").read_text()

    write_ranks_file(ranks, TINY_MERGES[:4])  # fewer merges: other tokens

    status = dvc(repo, "status", "tokenize").stdout
    assert "modified:           encodings" in status, status
    assert "Running stage 'tokenize'" in dvc(repo, "repro", "tokenize").stdout
    assert (repo / "data" / "tokens" / "index.json").read_text() != index


def test_under_dvc_an_encoding_file_outside_encodings_is_one_error_line(origin, tmp_path):
    repo = reproduced_clone(origin, tmp_path / "repo")
    outside = write_ranks_file(tmp_path / "outside.tiktoken")
    set_params(repo, {"tokenize": {"encoding": str(outside)}})

    result = dvc(repo, "repro", "tokenize", check=False)

    assert result.returncode != 0
    assert f"error: tokenize.encoding {outside} is outside encodings/" in result.stderr


# DVC's own behaviours


def limited_dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """`dvc <args>` with its address space capped at DVC_MEMORY."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (DVC_MEMORY, DVC_MEMORY))

    return subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=repo,
        env=pipeline_env(),
        capture_output=True,
        text=True,
        preexec_fn=cap,
        timeout=120,
    )


def test_dvc_expands_an_alias_bomb_in_params_yaml_until_memory_runs_out(origin, tmp_path):
    """Nine levels of nine aliases: 9**10 values once expanded. Under a cap that the project's params fit in with
    room to spare, DVC fails (MemoryError, or an abort) before any stage runs; the stage refuses the file at once."""
    repo = clone(origin, tmp_path / "repo")
    assert limited_dvc(repo, "status").returncode == 0, "the cap is too low for DVC itself"
    levels = "".join(f"  b{n}: &b{n} [{', '.join([f'*b{n - 1}'] * 9)}]\n" for n in range(1, 10))
    with open(repo / "params.yaml", "a") as params:
        params.write("bomb:\n  b0: &b0 [x, x, x, x, x, x, x, x, x]\n" + levels)

    result = limited_dvc(repo, "status")

    assert result.returncode != 0, result.stdout
    stage = sh(repo, sys.executable, "stages/fetch.py", "data/raw", check=False)
    assert stage.returncode == 1 and stage.stderr.startswith("error: params.yaml holds over 100,000 values")


def test_a_full_cache_disk_is_detected_and_fixed_by_commit_and_push(origin, tmp_path):
    """DVC 3.67 records the stage in dvc.lock and exits 0 although its output never reached the cache, and `dvc
    push` then exits 0 without it. `dvc status -q` and `dvc data status --granular` see it; `dvc commit -f`
    after freeing space repairs it."""
    repo = clone(origin, tmp_path / "repo")
    remote = tmp_path / "remote"
    dvc(repo, "remote", "add", "--local", "-d", "local", str(remote))
    with tmpfs(tmp_path / "cache", "16k") as cache:  # the corpus alone is 20 KB
        dvc(repo, "config", "--local", "cache.dir", str(cache))

        repro = dvc(repo, "repro", "fetch", check=False)

        assert repro.returncode == 0, "DVC now fails here: update docs/reliability.md"
        assert "No space left on device" in repro.stderr
        assert "data/raw/" in not_in(repo, "cache", "data/raw")

        subprocess.run(["mount", "-o", "remount,size=4m", str(cache)], check=True)  # space freed
        assert "not in cache:       data/raw" in dvc(repo, "status", "fetch").stdout
        assert dvc(repo, "status", "-q", "fetch", check=False).returncode == 1
        push = dvc(repo, "push", "fetch", check=False)
        assert push.returncode == 0 and "Some of the cache files do not exist" in push.stderr  # no error from DVC
        assert "data/raw/" in not_in(repo, "remote", "data/raw")

        dvc(repo, "commit", "-f", "fetch")
        dvc(repo, "push", "fetch")

        assert dvc(repo, "status", "-q", "fetch", check=False).returncode == 0
        assert not_in(repo, "cache", "data/raw") == not_in(repo, "remote", "data/raw") == []


# The team: a push that is complete


def test_a_push_is_complete_and_a_fresh_clone_pulls_all_of_it(origin, tmp_path):
    a = reproduced_clone(origin, tmp_path / "a")
    dvc(a, "remote", "add", "-d", "team", str(tmp_path / "remote"))
    commit(a)
    targets = ("data/raw", "data/tokens")

    push = dvc(a, "push", *targets)

    assert "WARNING" not in push.stderr, push.stderr
    assert not_in(a, "remote", *targets) == []
    b = clone(a, tmp_path / "b")
    dvc(b, "pull", *targets)
    assert "Data and pipelines are up to date." in dvc(b, "status", "fetch", "tokenize").stdout
    assert {k: v for k, v in outputs(b).items() if k.startswith(targets)} == {
        k: v for k, v in outputs(a).items() if k.startswith(targets)
    }

    # An object lost from the remote: `dvc status --cloud` still says "in sync"; the granular check does not.
    lost = next(path for path in (tmp_path / "remote").rglob("*") if path.is_file() and ".dir" not in path.name)
    lost.unlink()
    assert "in sync" in dvc(a, "status", "--cloud", *targets).stdout
    assert not_in(a, "remote", *targets) != []
    assert dvc(clone(a, tmp_path / "c"), "pull", *targets, check=False).returncode != 0
