"""Determinism and caching: fresh clones reproduce the committed dvc.lock byte for byte, and DVC's run-cache
brings back earlier params' outputs without running a stage.

Two clones of a git repo holding the project run `dvc repro` side by side, each with its own DVC cache.
The lock test fails when a change to the stages changes an output the committed dvc.lock records: run
`dvc repro` and commit dvc.lock with the change. The run-cache test changes params in the first clone; its
fixture's teardown puts the clone back as reproduced, so the tests pass in any order.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import set_params
from dvc_project import clone, dvc, outputs, popen_dvc, project_repo, put_back, sh, stop

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def clones(tmp_path_factory) -> Iterator[list[Path]]:
    base = tmp_path_factory.mktemp("determinism")
    origin = project_repo(base / "origin")
    repos = [clone(origin, base / name) for name in ("first", "second")]
    runs = [popen_dvc(repo, base / f"{repo.name}.log", "repro") for repo in repos]
    try:
        for run, repo in zip(runs, repos, strict=True):
            assert run.wait(timeout=600) == 0, (base / f"{repo.name}.log").read_text()
        yield repos
    finally:
        for run in runs:  # a run that failed or timed out leaves the other one running
            stop(run)


@pytest.fixture
def changed(clones) -> Iterator[Path]:
    """The first clone, for a test that changes its params and reruns it; put back as reproduced afterwards."""
    with put_back(clones[0]) as repo:
        yield repo


def test_two_fresh_clones_reproduce_byte_identical_outputs(clones):
    first, second = clones
    first_outputs, second_outputs = outputs(first), outputs(second)
    assert first_outputs.keys() == second_outputs.keys()
    assert [name for name in first_outputs if first_outputs[name] != second_outputs[name]] == []


def output_md5s(lock_text: str) -> dict[str, str]:
    """Each output's md5 in a dvc.lock, by path."""
    lock = yaml.safe_load(lock_text)
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def test_outputs_hash_to_the_committed_dvc_lock(clones):
    for repo in clones:
        committed = output_md5s(sh(repo, "git", "show", "HEAD:dvc.lock").stdout)
        assert output_md5s((repo / "dvc.lock").read_text()) == committed
        assert "Data and pipelines are up to date." in dvc(repo, "status").stdout


def test_stride_1_then_2_then_1_restores_stride_1_from_the_run_cache(changed):
    repo = changed
    # probe's outputs come with git and were up to date in this fresh clone, so probe never ran here and the
    # run-cache has no entry for it yet (a team shares entries with `dvc push --run-cache`).
    dvc(repo, "repro", "--force", "--single-item", "probe")
    stride_1 = outputs(repo)

    set_params(repo, {"window": {"stride": 2}})
    ran = set(re.findall(r"Running stage '(\w+)'", dvc(repo, "repro").stdout))
    assert "window" in ran
    assert outputs(repo) != stride_1

    set_params(repo, {"window": {"stride": 1}})
    log = dvc(repo, "repro").stdout
    assert "Running stage" not in log
    assert set(re.findall(r"Stage '(\w+)' is cached - skipping run", log)) == ran
    assert outputs(repo) == stride_1
