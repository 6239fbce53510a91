"""The README's quick start, run as written in a fresh clone of the project, gives the book's figures.

The commands are the lines of the fenced bash blocks under the README's "## Quick start" heading, run in order
by bash in a fresh clone (git files only: no DVC cache, no outputs). make gets this interpreter's venv as VENV and
is told that the venv is set up (`-o VENV/.installed`): `make setup` would otherwise create a venv and install
several GB into it. A dry run first proves that no command would create or change the venv. `make test` only gets
a dry run, since running it here would run this test again. Every HTTP(S) proxy points at a closed port, so any
download would fail: the quick start's own export line is what lets the run go without one.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from dvc_project import clone, pipeline_env, project_repo, sh

from llmpipe.figures import FIGURES

pytestmark = pytest.mark.e2e

VENV = Path(sys.executable).parent.parent
CLOSED_PORT = "http://127.0.0.1:9"  # the discard port: nothing listens on it
TEST_COMMAND = "make test"


def quick_start() -> list[str]:
    """The command lines of the fenced bash blocks under the README's "## Quick start" heading, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Quick start\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert section, "README.md has no '## Quick start' section"
    blocks = re.findall(r"^```bash\n(.*?)^```", section[1], re.S | re.M)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def make_args(command: str) -> list[str]:
    """`make <args>` as this test runs it: with the running venv, marked as set up; quiet about directories,
    which a make run from inside `make test` would otherwise announce."""
    return ["make", "--no-print-directory", "-o", f"{VENV}/.installed", f"VENV={VENV}", *shlex.split(command)[1:]]


def script(commands: list[str]) -> str:
    """A bash script that runs `commands` offline-or-fail, with `make` running as make_args says."""
    proxies = " ".join(f"{name}={CLOSED_PORT}" for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"))
    return "\n".join(
        [
            "set -euo pipefail",
            "unset no_proxy NO_PROXY ALL_PROXY all_proxy",
            f"export {proxies}",
            f'make() {{ command {shlex.join(make_args("make"))} "$@"; }}',
            *commands,
        ]
    )


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Path, str]:
    """A fresh clone after the README's quick start (all but the test command), and what the quick start printed."""
    base = tmp_path_factory.mktemp("readme")
    repo = clone(project_repo(base / "origin"), base / "clone")
    commands = [command for command in quick_start() if command != TEST_COMMAND]
    for command in commands:
        if command.startswith("make "):
            planned = sh(repo, *make_args(command), "-n").stdout
            assert " -m venv " not in planned and "pip install" not in planned, f"{command} would set up a venv"
    result = subprocess.run(
        ["bash", "-c", script(commands)], cwd=repo, env=pipeline_env(), capture_output=True, text=True, timeout=1800
    )
    assert result.returncode == 0, f"the quick start failed:\n{result.stdout}\n{result.stderr}"
    return repo, result.stdout


def metrics(repo: Path, stage: str) -> dict:
    return json.loads((repo / "metrics" / f"{stage}.json").read_text())


def test_quick_start_reproduces_the_books_figures(quick):
    repo, printed = quick
    # The export line pointed fetch at the clone's own copy of the corpus, by an absolute path.
    assert f"fetch: 20479 bytes from {repo}/tests/data/corpus/the-verdict.txt" in printed

    tokenize = metrics(repo, "tokenize")
    assert tokenize["num_tokens"] == 5145
    assert json.loads(tokenize["first_tokens"])[:5] == [40, 367, 2885, 1464, 1807]
    window = metrics(repo, "window")
    assert window["num_windows"] == 5141
    assert json.loads(window["first_input"]) == [40, 367, 2885, 1464]
    dataset = metrics(repo, "dataset")
    assert json.loads(dataset["batch_input_shape"]) == json.loads(dataset["batch_target_shape"]) == [8, 4]
    embed = metrics(repo, "embed")
    assert json.loads(embed["sample_embedding_shape"]) == [2, 4, 256]
    assert json.loads(embed["input_embedding_shape"]) == [8, 4, 256]
    assert list(metrics(repo, "sweep")["num_windows"].values()) == [5141, 2571, 5137, 1285]


def test_make_figures_prints_the_books_figures(quick):
    repo, printed = quick
    label = {(name, key): label for label, name, key in FIGURES}
    shown = dict(re.findall(r"^(.+?) {2,}(.+?)  \(metrics/[^)]+\)$", printed, re.M))

    assert shown[label["tokenize.json", "num_tokens"]] == "5145"
    assert shown[label["tokenize.json", "first_tokens"]].startswith("[40, 367, 2885, 1464, 1807, ")
    assert shown[label["window.json", "num_windows"]] == "5141"
    assert shown[label["dataset.json", "batch_input_shape"]] == "[8, 4]"
    assert shown[label["embed.json", "sample_embedding_shape"]] == "[2, 4, 256]"
    assert shown[label["embed.json", "input_embedding_shape"]] == "[8, 4, 256]"
    assert shown[label["sweep.json", "num_windows"]] == "5141 / 2571 / 5137 / 1285"


def test_the_test_command_runs_pytest(quick):
    repo, _ = quick
    assert TEST_COMMAND in quick_start()

    planned = sh(repo, *make_args(TEST_COMMAND), "-n").stdout.splitlines()

    assert planned[-1] == f"{VENV}/bin/python -m pytest"
