"""End to end: the real `dvc repro` in a temporary git repo holding a copy of the project.

Uses the book's corpus and tiktoken's GPT-2 cache committed under tests/data, so it needs no network.
The tests share one repo, reproduced once; a test that changes it does so through the `changed` fixture,
whose teardown puts its params, lock, metrics and outputs back as they were, so the tests pass in any order.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import VERDICT, VERDICT_SHA256, set_params, snapshot
from dvc_project import dvc, project_repo, put_back, reproduced, sh
from safetensors.numpy import load_file

from llmpipe.formats import load_tokens

pytestmark = pytest.mark.e2e

STAGES = {"fetch", "tokenize", "window", "dataset", "embed", "sweep", "stats", "train", "probe"}
FAST_TRAINING = {"train": {"max_steps": 10}}  # the reruns below are about which stages run, not the model


def metrics(repo: Path, stage: str) -> dict:
    return json.loads((repo / "metrics" / f"{stage}.json").read_text())


@pytest.fixture(scope="module")
def first_repro(tmp_path_factory) -> tuple[Path, str]:
    """The project in a fresh git repo, and the output of its first `dvc repro`."""
    repo = project_repo(tmp_path_factory.mktemp("project"))
    return repo, dvc(repo, "repro").stdout


@pytest.fixture
def repo(first_repro) -> Path:
    """The reproduced repo, as committed: for tests that only read it."""
    return first_repro[0]


@pytest.fixture
def changed(repo) -> Iterator[Path]:
    """The reproduced repo, for a test that changes params and reruns stages; put back as it was afterwards."""
    with put_back(repo):
        yield repo


@pytest.fixture
def experiment(changed) -> Iterator[str]:
    """The name of an experiment the test runs in the repo; removed afterwards."""
    yield "stride-2"
    dvc(changed, "exp", "remove", "stride-2", check=False)  # absent when the test failed before running it


def test_fresh_clone_repro_runs_every_stage_with_cached_outputs(first_repro):
    # sweep's and stats' outputs are small files committed to git, and their input tokens come out
    # byte-identical, so DVC rightly finds them up to date.
    assert reproduced(first_repro[1]) == STAGES - {"sweep", "stats"}


def test_repro_reproduces_the_books_figures(repo):
    fetch = metrics(repo, "fetch")
    assert (fetch["chars"], fetch["bytes"], fetch["sha256"]) == (20479, 20479, VERDICT_SHA256)
    assert (repo / "data/raw/the-verdict.txt").read_bytes() == VERDICT.read_bytes()

    tokenize = metrics(repo, "tokenize")
    assert (tokenize["num_tokens"], tokenize["vocab_size"]) == (5145, 50257)
    first = [40, 367, 2885, 1464, 1807, 3619, 402, 271, 10899, 2138, 257, 7026, 15632, 438, 2016, 257, 922, 5891, 1576]
    assert json.loads(tokenize["first_tokens"]) == [*first, 438]
    tokens, _ = load_tokens(repo / "data/tokens", verify=True)
    assert tokens.dtype == np.uint16 and len(tokens) == 5145
    assert tokens[: len(first)].tolist() == first

    window = metrics(repo, "window")
    assert window["num_windows"] == 5141
    assert json.loads(window["first_input"]) == [40, 367, 2885, 1464]
    assert json.loads(window["first_target"]) == [367, 2885, 1464, 1807]
    assert (repo / "data/windows/preview.csv").read_text().splitlines()[1].startswith("0,0,40 367 2885 1464,")

    dataset = metrics(repo, "dataset")
    assert json.loads(dataset["batch_input_shape"]) == json.loads(dataset["batch_target_shape"]) == [8, 4]
    # The last 10% of the tokens validate (dataset.val_fraction): 4,626 training windows, 511 validation windows.
    assert (dataset["num_windows"], dataset["val_num_windows"], dataset["num_batches"]) == (4626, 511, 4626 // 8)

    embed = metrics(repo, "embed")
    assert json.loads(embed["token_embedding_shape"]) == [50257, 256]
    assert json.loads(embed["sample_embedding_shape"]) == [2, 4, 256]
    assert json.loads(embed["input_embedding_shape"]) == [8, 4, 256]
    tensors = load_file(repo / "data/embeddings/embeddings.safetensors")
    assert tensors["input_embeddings"].shape == (8, 4, 256)

    rows = list(csv.DictReader(io.StringIO((repo / "metrics/sweep.csv").read_text())))
    assert [(r["max_length"], r["stride"], r["num_windows"], r["formula"]) for r in rows] == [
        ("4", "1", "5141", "5141"),
        ("4", "2", "2571", "2571"),
        ("8", "1", "5137", "5137"),
        ("8", "4", "1285", "1285"),
    ]


def test_committed_lock_and_metrics_hold(repo):
    """The outputs hash to what the project's committed dvc.lock says: the run is deterministic."""
    assert sh(repo, "git", "status", "--porcelain", "--", "dvc.lock", "metrics").stdout == ""
    assert "Data and pipelines are up to date." in dvc(repo, "status").stdout


def test_metrics_show_prints_the_figures(repo):
    table = dvc(repo, "metrics", "show").stdout
    for figure in ("20479", "5145", "5141", "[8, 4]", "[2, 4, 256]", "[8, 4, 256]", "2571", "5137", "1285"):
        assert figure in table


def test_dag_and_plot_render(repo):
    dag = dvc(repo, "dag", "--mermaid").stdout
    for stage in STAGES:
        assert stage in dag
    vega = json.loads(dvc(repo, "plots", "show", "--json").stdout)
    (plot,) = vega["data"]["metrics/sweep.csv"]
    assert plot["content"]["encoding"]["color"]["field"] == "max_length"
    assert len(plot["content"]["data"]["values"]) == 4


def test_noop_repro_runs_nothing(repo):
    assert reproduced(dvc(repo, "repro").stdout) == set()


def test_changing_embed_dim_reruns_only_embed_and_what_follows_it(changed):
    set_params(changed, {"embed": {"dim": 64}, **FAST_TRAINING})
    assert reproduced(dvc(changed, "repro").stdout) == {"embed", "train", "probe"}
    assert json.loads(metrics(changed, "embed")["input_embedding_shape"]) == [8, 4, 64]


def test_changing_stride_reruns_window_and_what_follows_it_only(changed):
    tokens_before = snapshot(changed, "data/tokens")
    set_params(changed, {"window": {"stride": 2}, **FAST_TRAINING})
    assert reproduced(dvc(changed, "repro").stdout) == {"window", "dataset", "embed", "train", "probe"}
    assert metrics(changed, "window")["num_windows"] == 2571
    assert snapshot(changed, "data/tokens") == tokens_before


def test_bad_param_fails_in_one_line_and_keeps_upstream_outputs(changed):
    tokens_before = snapshot(changed, "data/tokens")
    set_params(changed, {"window": {"stride": 0}})
    result = dvc(changed, "repro", check=False)
    assert result.returncode != 0
    assert "error: window.stride must be a positive integer, got 0" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert snapshot(changed, "data/tokens") == tokens_before


def test_experiment_with_stride_2_records_2571_windows(changed, experiment):
    dvc(changed, "exp", "run", "-n", experiment, "-S", "window.stride=2")
    table = list(csv.DictReader(io.StringIO(dvc(changed, "exp", "show", "--csv").stdout)))
    (row,) = [row for row in table if row["Experiment"] == experiment]
    assert row["window.stride"] == "2"
    assert row["metrics/window.json:num_windows"] == "2571"
