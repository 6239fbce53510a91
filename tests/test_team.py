"""Team use, end to end: the shared DVC remote (a local folder, then S3), an experiment grid, plots in a browser.

One project repo (clone A, with a bare git repo as the team's origin) serves the whole module, reproduced once
from the corpus committed under tests/data; the experiment grid is queued and run once too. Each test does one
thing a team does (push and pull in a fresh clone, compare and apply an experiment, plot, move the remote to
S3), and what it changes in A or the origin is put back in its fixtures' teardown, so the tests pass in any
order, and each one alone.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, snapshot
from dvc_project import clone, dvc, project_repo, put_back, reproduced, sh

from llmpipe.windows import num_windows, split_point

pytestmark = pytest.mark.e2e

GRID = {(max_length, stride) for max_length in (4, 8) for stride in (1, 2, 4)}
PLOTS = {"sweep": "metrics_sweep_csv", "token_freq": "metrics_token_freq_csv", "zipf": "metrics_zipf_csv"}
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def team(tmp_path_factory) -> Path:
    """team/a: the project, reproduced and committed, pushed to the git remote team/origin.git."""
    team = tmp_path_factory.mktemp("team")
    a = project_repo(team / "a")
    sh(team, "git", "init", "-q", "--bare", "--initial-branch=main", "origin.git")
    dvc(a, "repro")
    if sh(a, "git", "status", "--porcelain").stdout:  # nothing to commit when the committed dvc.lock holds
        sh(a, "git", "add", "-A")
        sh(a, "git", "commit", "-qm", "reproduce")
    sh(a, "git", "remote", "add", "origin", str(team / "origin.git"))
    sh(a, "git", "push", "-q", "origin", "HEAD:main")
    return team


def teammate(team: Path, name: str) -> Path:
    """A fresh clone of the team's git remote, as a teammate makes it: git files only, no data."""
    return clone(team / "origin.git", team / name)


def run_cache(repo: Path) -> set[str]:
    """The run-cache entries (one file per stage run) in the repo's local cache."""
    runs = repo / ".dvc" / "cache" / "runs"
    return {str(path.relative_to(runs)) for path in runs.rglob("*") if path.is_file()}


def test_default_remote_round_trip_with_the_run_cache(team):
    a = team / "a"
    dvc(a, "push", "--run-cache")
    # The default remote is ../dvc-storage beside the clone (.dvc/config): clones side by side share it.
    assert (team / "dvc-storage" / "files").is_dir()

    b = teammate(team, "b")
    dvc(b, "pull", "--run-cache")

    assert "Data and pipelines are up to date." in dvc(b, "status").stdout
    assert reproduced(dvc(b, "repro").stdout) == set()
    for folder in ("data/tokens", "data/dataset", "data/embeddings"):
        assert snapshot(b, folder) == snapshot(a, folder), folder
    assert run_cache(b) == run_cache(a) != set()


def wait_for_queue(repo: Path, limit_seconds: float = 600) -> str:
    """Wait until no queued experiment is waiting or running; return the final `dvc queue status`."""
    deadline = time.monotonic() + limit_seconds
    while re.search(r"\b(Queued|Running)\b", status := dvc(repo, "queue", "status").stdout):
        assert time.monotonic() < deadline, f"the queue did not drain in {limit_seconds} s:\n{status}"
        time.sleep(2)
    return status


@pytest.fixture(scope="module")
def grid(team) -> dict[tuple[int, int], str]:
    """The README's grid, queued and run two at a time in A: experiment name by (max_length, stride)."""
    a = team / "a"
    # embed.context_length must cover the longest window (8), so the grid sets it once for all six.
    # train.max_steps=10 keeps the six trainings short: this grid is about the windows.
    dvc(a, "exp", "run", "--queue", "-S", "window.max_length=4,8", "-S", "window.stride=1,2,4",
        "-S", "embed.context_length=8", "-S", "train.max_steps=10")  # fmt: skip
    dvc(a, "queue", "start", "-j", "2")
    status = wait_for_queue(a)
    assert status.count("Success") == 6, status
    rows = csv.DictReader(io.StringIO(dvc(a, "exp", "show", "--csv").stdout))
    return {
        (int(row["window.max_length"]), int(row["window.stride"])): row["Experiment"]
        for row in rows
        if row["typ"].startswith("branch_")
    }


def test_queued_grid_records_the_closed_form_window_counts(team, grid):
    rows = list(csv.DictReader(io.StringIO(dvc(team / "a", "exp", "show", "--csv").stdout)))
    experiments = [row for row in rows if row["typ"].startswith("branch_")]
    num_tokens = json.loads((team / "a/metrics/tokenize.json").read_text())["num_tokens"]
    num_train = split_point(num_tokens, 0.1)  # dataset.val_fraction

    assert len(experiments) == 6 and set(grid) == GRID
    for row in experiments:
        max_length, stride = int(row["window.max_length"]), int(row["window.stride"])
        expected = num_windows(num_tokens, max_length, stride)
        assert int(row["metrics/window.json:num_windows"]) == expected, row["Experiment"]
        assert int(row["metrics/dataset.json:num_windows"]) == num_windows(num_train, max_length, stride)
    assert int(next(r for r in experiments if r["Experiment"] == grid[4, 2])["metrics/window.json:num_windows"]) == 2571


@pytest.fixture
def applied(team) -> Iterator[Path]:
    """A, for a test that applies an experiment to its workspace; put back as it was afterwards."""
    with put_back(team / "a") as a:
        yield a


def test_compare_and_apply_an_experiment(grid, applied):
    a = applied
    params = json.loads(dvc(a, "params", "diff", grid[4, 1], grid[8, 4], "--json").stdout)
    metrics = json.loads(dvc(a, "metrics", "diff", grid[4, 1], grid[8, 4], "--json").stdout)

    assert params["params.yaml"]["window.max_length"] == {"old": 4, "new": 8, "diff": 4}
    assert params["params.yaml"]["window.stride"] == {"old": 1, "new": 4, "diff": 3}
    assert metrics["metrics/window.json"]["num_windows"] == {"old": 5141, "new": 1285, "diff": -3856}

    dvc(a, "exp", "apply", grid[8, 4])
    assert json.loads((a / "metrics/window.json").read_text())["num_windows"] == 1285
    assert "Data and pipelines are up to date." in dvc(a, "status").stdout


MARKS = re.compile(r'<g class="mark-(\w+) role-mark[^"]*"[^>]*>(.*?)</g>', re.S)
DATUM = re.compile(r'<path aria-label="([^"]*)" role="graphics-symbol"')
PLOT_DIV = re.compile(r'<div id="(\w+)"')


def chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium on `page`, with every host name unresolvable: the page gets no network at all."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=15000", *args, page.as_uri(),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def drawn(page: Path, profile: Path) -> dict[str, dict[str, list[str]]]:
    """What the browser drew: per plot div, per mark type (line, rect, symbol), the datum of each mark."""
    dom = chromium(page, profile, "--dump-dom").stdout
    plots = {}
    pieces = PLOT_DIV.split(dom)
    for div, body in zip(pieces[1::2], pieces[2::2], strict=True):
        marks: dict[str, list[str]] = {}
        for mark, content in MARKS.findall(body):
            marks.setdefault(mark, []).extend(html.unescape(label) for label in DATUM.findall(content))
        plots[div] = marks
    return plots


def numbers(labels: list[str], field: str) -> list[int]:
    return [int(re.search(rf"\b{field}: ([\d,]+)", label).group(1).replace(",", "")) for label in labels]


@pytest.fixture
def vega(team) -> Iterator[Path]:
    """The npm bundles of `make vega`, linked into A beside dvc_plots/ where the page looks for them; unlinked
    afterwards."""
    if not (ROOT / ".vega" / ".installed").is_file():
        subprocess.run(["make", "-s", "vega"], cwd=ROOT, check=True, timeout=600)
    link = team / "a" / ".vega"
    link.symlink_to(ROOT / ".vega")
    yield link
    link.unlink(missing_ok=True)


@pytest.mark.browser
def test_plots_show_draws_every_chart_with_no_network(team, vega, tmp_path):
    a = team / "a"
    dvc(a, "plots", "show")
    page = a / "dvc_plots" / "index.html"
    assert "../.vega/node_modules/vega/build/vega.min.js" in page.read_text()

    plots = drawn(page, tmp_path / "profile")
    chromium(page, tmp_path / "profile", "--window-size=1200,1600", f"--screenshot={tmp_path / 'plots.png'}")

    assert set(PLOTS.values()) <= set(plots)  # and the training plots (tests/test_train_e2e.py)
    sweep = plots[PLOTS["sweep"]]
    assert len(sweep["line"]) == 2  # one line per max_length
    assert sorted(numbers(sweep["symbol"], "num_windows")) == [1285, 2571, 5137, 5141]
    top = list(csv.DictReader(open(a / "metrics/token_freq.csv", encoding="utf-8")))
    bars = plots[PLOTS["token_freq"]]["rect"]
    assert len(bars) == 30 and numbers(bars, "count") == [int(row["count"]) for row in top]
    assert "token: ␣the" in " ".join(bars)  # decoded tokens label the bars
    zipf = plots[PLOTS["zipf"]]
    distinct = json.loads((a / "metrics/stats.json").read_text())["distinct_tokens"]
    assert len(zipf["line"]) == 1 and len(zipf["symbol"]) == distinct
    assert (tmp_path / "plots.png").stat().st_size > 20_000

    # The control: without the local bundles the same page draws nothing, so the browser had no CDN to fall
    # back on, and what it drew above came from .vega/.
    vega.unlink()
    assert all(marks == {} for marks in drawn(page, tmp_path / "profile").values())


@pytest.mark.browser
def test_plots_diff_between_two_experiments_draws_both(team, grid, vega, tmp_path):
    a = team / "a"
    dvc(a, "plots", "diff", grid[4, 1], grid[8, 4])

    plots = drawn(a / "dvc_plots" / "index.html", tmp_path / "profile")

    assert set(PLOTS.values()) <= set(plots)  # and the training plots (tests/test_train_e2e.py)
    assert len(plots[PLOTS["sweep"]]["line"]) == 4  # two max_lengths in each of two experiments
    bars = plots[PLOTS["token_freq"]]["rect"]
    assert len(bars) == 60 and {re.search(r"\brev: (\S+);", b).group(1) for b in bars} == {grid[4, 1], grid[8, 4]}
    assert len(plots[PLOTS["zipf"]]["line"]) == 2


@pytest.fixture
def moving(team) -> Iterator[Path]:
    """A, for a test that moves the team's DVC remote and pushes that to the origin: afterwards A and the origin
    are back at the commit before, with the default remote."""
    a = team / "a"
    before = sh(a, "git", "rev-parse", "HEAD").stdout.strip()
    yield a
    sh(a, "git", "reset", "-q", "--hard", before)
    sh(a, "git", "push", "-qf", "origin", f"{before}:main")


def test_s3_remote_round_trip(moving, team, s3_server):
    endpoint, s3 = s3_server
    a = moving
    venv = Path(sys.executable).parent.parent
    # The README's one command that moves the team to S3, then the same push and pull as with the folder.
    sh(a, "make", "-s", "remote-s3", f"VENV={venv}", "S3_URL=s3://team-cache/ch2", f"S3_ENDPOINT={endpoint}")
    assert dvc(a, "remote", "default").stdout.strip() == "s3"
    assert dvc(a, "config", "remote.s3.endpointurl").stdout.strip() == endpoint
    sh(a, "git", "commit", "-qam", "the DVC remote is S3")
    sh(a, "git", "push", "-q", "origin", "HEAD:main")
    dvc(a, "push", "--run-cache")
    stored = {item["Key"].split("/")[1] for item in s3.list_objects_v2(Bucket="team-cache")["Contents"]}
    assert stored == {"files", "runs"}  # the outputs and the run-cache, under the remote's ch2/ prefix

    c = teammate(team, "c")
    dvc(c, "pull", "--run-cache")

    assert "Data and pipelines are up to date." in dvc(c, "status").stdout
    assert reproduced(dvc(c, "repro").stdout) == set()
    assert (c / "data/embeddings/embeddings.safetensors").read_bytes() == (
        a / "data/embeddings/embeddings.safetensors"
    ).read_bytes()
