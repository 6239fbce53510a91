"""Training end to end with the real DVC: `dvc repro` trains on the book's story with the default params and writes
DVCLive's metrics and plots, an experiment on a training param reruns only train and probe, `dvc exp show` lists
the validation loss, a forced rerun is byte-identical, and the browser draws the loss curves and the 2-D map.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import re
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT
from dvc_project import dvc, project_repo, reproduced, sh

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
LOSS_PLOT = "Training and validation loss against optimizer step"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """The project reproduced with its default params, and committed, so experiments have a baseline."""
    repo = project_repo(tmp_path_factory.mktemp("train") / "repo")
    dvc(repo, "repro")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "reproduce", check=False)  # nothing to commit if the lock already held
    return repo


def metrics(repo: Path, name: str) -> dict:
    return json.loads((repo / "metrics" / name).read_text())


def test_repro_trains_and_keeps_the_chapter_2_figures(repo):
    assert metrics(repo, "tokenize.json")["num_tokens"] == 5145
    assert metrics(repo, "window.json")["num_windows"] == 5141
    dataset = metrics(repo, "dataset.json")
    assert (dataset["num_windows"], dataset["val_num_windows"], dataset["batch_input_shape"]) == (4626, 511, "[8, 4]")
    embed = metrics(repo, "embed.json")
    assert (embed["sample_embedding_shape"], embed["input_embedding_shape"]) == ("[2, 4, 256]", "[8, 4, 256]")

    train = metrics(repo, "train/metrics.json")
    assert train["step"] == 300 and train["tokens_seen"] == 300 * 8 * 4
    assert train["val_perplexity"] == pytest.approx(math.exp(train["val_loss"]))
    # From about ln(50257) = 10.8 down, and below the unigram baseline counted on the same training split.
    assert train["initial_val_loss"] > 10
    assert train["val_loss"] < train["unigram_val_loss"]
    assert 0 < train["bigram_val_loss"] < train["unigram_val_loss"]
    for name in ("train_loss", "val_loss", "tokens_seen", "lr"):
        rows = (repo / "metrics/train/plots/metrics" / f"{name}.tsv").read_text().splitlines()
        assert rows[0] == f"step\t{name}" and len(rows) == 1 + 13  # steps 0, 25, ..., 300
    assert (repo / "data/model/model.safetensors").is_file() and (repo / "data/model/config.json").is_file()

    probe = metrics(repo, "probe.json")
    assert abs(probe["initial_score"]) < 0.05  # random embeddings: about 0
    assert probe["trained_score"] > probe["initial_score"]
    assert "| `␣she` |" in (repo / "data/probe/neighbours.md").read_text()


def test_plots_show_lists_the_loss_curves_and_the_2d_map(repo):
    plots = json.loads(dvc(repo, "plots", "show", "--json").stdout)["data"]
    (loss,) = plots[LOSS_PLOT]
    values = loss["content"]["data"]["values"]
    assert sum("train_loss" in row for row in values) == sum("val_loss" in row for row in values) == 13
    (pca,) = plots["metrics/probe_pca.csv"]
    assert len(pca["content"]["data"]["values"]) == 2 * 12  # 12 probe words, before and after
    for name in ("train_loss", "val_loss", "tokens_seen", "lr"):
        assert f"metrics/train/plots/metrics/{name}.tsv" in plots


def test_a_forced_rerun_is_byte_identical(repo):
    dvc(repo, "repro", "-f", "-s", "train")

    assert sh(repo, "git", "status", "--porcelain", "--", "dvc.lock", "metrics").stdout == ""
    assert "Data and pipelines are up to date." in dvc(repo, "status").stdout


def val_loss_column(row: dict) -> str:
    """exp show names a metric by its key alone unless two files share it."""
    return "val_loss" if "val_loss" in row else "metrics/train/metrics.json:val_loss"


def test_an_experiment_on_a_training_param_reruns_only_train_and_probe(repo):
    try:
        out = dvc(repo, "exp", "run", "-n", "faster", "-S", "train.lr=0.002", "-S", "train.max_steps=50").stdout

        assert reproduced(out) == {"train", "probe"}
        rows = list(csv.DictReader(io.StringIO(dvc(repo, "exp", "show", "--csv").stdout)))
        column = val_loss_column(rows[0])
        faster = next(row for row in rows if row["Experiment"] == "faster")
        baseline = next(row for row in rows if row["typ"] == "baseline" and row["rev"] != "workspace")
        assert float(faster[column]) != float(baseline[column]) > 0
        assert faster["train.lr"] == "0.002" and faster["train.max_steps"] == "50"
    finally:  # the workspace back at the baseline, for the tests after this one
        dvc(repo, "exp", "remove", "faster", check=False)
        sh(repo, "git", "checkout", "--", ".")
        dvc(repo, "checkout", "--force")


def test_noop_repro_runs_nothing(repo):
    assert reproduced(dvc(repo, "repro").stdout) == set()


# The browser: the page `dvc plots show` writes, drawn by headless Chromium with the offline Vega of `make vega`.

MARKS = re.compile(r'<g class="mark-(\w+) role-mark[^"]*"[^>]*>(.*?)</g>', re.S)
DATUM = re.compile(r'<path aria-label="([^"]*)" role="graphics-symbol"')
TEXT = re.compile(r'<text [^>]*aria-label="([^"]*)" role="graphics-symbol"')
PLOT_DIV = re.compile(r'<div id="(\w+)"')


def drawn(page: Path, profile: Path) -> dict[str, dict[str, list[str]]]:
    """Per plot div, per mark type, the aria label of each mark drawn, with no network at all."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=15000", "--dump-dom", page.as_uri(),
    ]  # fmt: skip
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    plots = {}
    pieces = PLOT_DIV.split(dom)
    for div, body in zip(pieces[1::2], pieces[2::2], strict=True):
        marks: dict[str, list[str]] = {}
        for mark, content in MARKS.findall(body):
            labels = DATUM.findall(content) + TEXT.findall(content)
            marks.setdefault(mark, []).extend(html.unescape(label) for label in labels)
        plots[div] = marks
    return plots


@pytest.mark.browser
def test_the_browser_draws_the_loss_curves_and_the_2d_map(repo, tmp_path):
    if not (ROOT / ".vega" / ".installed").is_file():
        subprocess.run(["make", "-s", "vega"], cwd=ROOT, check=True, timeout=600)
    link = repo / ".vega"
    link.symlink_to(ROOT / ".vega")
    try:
        dvc(repo, "plots", "show")
        plots = drawn(repo / "dvc_plots" / "index.html", tmp_path / "profile")
    finally:
        link.unlink()

    loss = next(marks for div, marks in plots.items() if div.startswith("Training_and_validation_loss"))
    # DVC's linear template: each series a line (drawn twice: the line and its hover target) and a point at its end.
    series = {re.search(r"filename::field: \S+::(\w+)", label).group(1) for label in loss["line"]}
    assert series == {"train_loss", "val_loss"}
    assert [re.search(r"\bstep: (\d+)", label).group(1) for label in loss["symbol"]] == ["300", "300"]
    for name in ("train_loss", "val_loss", "tokens_seen", "lr"):
        history = plots[f"metrics_train_plots_metrics_{name}_tsv"]
        assert history["line"] and [label.split(";")[0] for label in history["symbol"]] == ["step: 300"]
    pca = plots["metrics_probe_pca_csv"]
    assert len(pca["symbol"]) == 24 and len(pca["text"]) == 24  # 12 words before and after, each labelled
    words = {re.search(r"word: (\w+)", label).group(1) for label in pca["text"]}
    assert words == {"he", "she", "his", "her", "I", "picture", "painting", "wife", "said", "was", "had", "Jack"}
