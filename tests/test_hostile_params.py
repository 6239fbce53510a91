"""Hostile params.yaml: whatever the values, a stage ends in valid outputs or one `error:` line, never a traceback.

Property-based (hypothesis, derandomized so CI sees the same examples every run): each stage's main() runs
in-process on a copy of the small built project (conftest's chain) with its params.yaml section replaced by
generated values: 0, negatives, huge and 64-bit-overflowing ints, floats, NaN, strings, lists, nulls,
mappings, missing and unknown keys. A handful of subprocess runs then prove the same end to end.
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

import pytest
import yaml
from conftest import ROOT, assert_one_line_error, copy_project, run_stage, set_params, stage_command, stage_module
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from llmpipe.cli import run
from llmpipe.data import create_dataloader
from llmpipe.errors import PipelineError
from llmpipe.formats import EMBEDDINGS_FILE, load_embeddings, load_tokens, read_windows
from llmpipe.params import load_params

STAGES = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
# fetch is validated without running: its sources may be URLs, and hostile ones must not reach the network.
RUN_IN_PROCESS = [stage for stage in STAGES if stage != "fetch"]

HUGE = [2**31, 2**63 - 1, 2**63, 2**64, 10**30, -(2**63) - 1]
# No real encoding name among the strings: tiktoken would download it, and tests reach no network.
VALUES = st.one_of(
    st.sampled_from([0, -1, 1, 2, *HUGE, 0.0, 0.5, 1.5, -2.5, 4.0, float("inf"), float("nan"), True, False, None]),
    st.sampled_from(["", " ", "0", "4", "true", "null", "gpt-2", "a\nb", "../x", "/dev/null", "x.tiktoken"]),
    st.integers(-3, 40),
    st.text(max_size=12),
    st.lists(st.one_of(st.integers(-2, 10), st.sampled_from(HUGE), st.none()), max_size=3),
    st.lists(st.lists(st.integers(-2, 12), max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
KEYS = st.one_of(st.text(max_size=10), st.integers(), st.booleans(), st.none())
HYPOTHESIS = settings(
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@st.composite
def hostile_section(draw, defaults: dict) -> object:
    """The section as written in params.yaml: each key kept, replaced or dropped; maybe an unknown key;
    rarely not a mapping at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(VALUES)
    section = {}
    for key, default in defaults.items():
        choice = draw(st.sampled_from(["keep"] * 6 + ["replace"] * 3 + ["drop"]))
        if choice != "drop":
            section[key] = default if choice == "keep" else draw(VALUES)
    if draw(st.integers(0, 4)) == 0:
        section[draw(KEYS)] = draw(VALUES)
    return section


def write_section(project: Path, stage: str, section: object) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[stage] = section
    path.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))


def check_outputs(stage: str) -> None:
    """A stage that succeeded left outputs its readers accept (run in the project folder)."""
    data = Path("data")
    if stage == "tokenize":
        load_tokens(data / "tokens")
    elif stage == "window":
        assert read_windows(data / "windows")["num_windows"] >= 1
    elif stage == "dataset":
        next(iter(create_dataloader(data / "dataset")))
    elif stage == "embed":
        load_embeddings(data / "embeddings" / EMBEDDINGS_FILE)
    assert not list(Path("data").glob(".*.tmp-*")) and not list(Path("metrics").glob(".*.tmp-*"))


@pytest.mark.parametrize("stage", RUN_IN_PROCESS)
@HYPOTHESIS
@given(data=st.data())
def test_any_params_give_valid_outputs_or_one_error_line(chain, stage, data):
    defaults = yaml.safe_load((chain / "params.yaml").read_text())[stage]
    section = data.draw(hostile_section(defaults), label=f"params.yaml {stage}:")
    module = stage_module(stage)
    with tempfile.TemporaryDirectory() as folder:
        project = copy_project(chain, Path(folder) / "project")
        write_section(project, stage, section)
        stderr = io.StringIO()
        argv = stage_command(stage)[1:]
        with contextlib.chdir(project), contextlib.redirect_stderr(stderr), mock.patch.object(sys, "argv", argv):
            try:
                run(module.main)
            except SystemExit as exit_info:
                event("error")
                assert exit_info.code == 1
                lines = stderr.getvalue().strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("error: "), stderr.getvalue()
            else:
                event("valid outputs")
                check_outputs(stage)


@pytest.mark.parametrize("stage", STAGES)
@HYPOTHESIS
@given(data=st.data())
def test_load_params_returns_checked_values_or_one_line_error(stage, data):
    schema = stage_module(stage).SCHEMA
    defaults = yaml.safe_load((ROOT / "params.yaml").read_text())[stage]
    section = data.draw(hostile_section(defaults), label=f"params.yaml {stage}:")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "params.yaml"
        path.write_text(yaml.safe_dump({stage: section}, allow_unicode=True))
        try:
            params = load_params(stage, schema, path)
        except PipelineError as error:
            assert "\n" not in str(error) and len(str(error)) < 1000, str(error)
        else:
            assert params.keys() == schema.keys()


@pytest.mark.parametrize(
    "content",
    [
        "window:\n  max_length: 2001-13-45\n  stride: 1\n",  # a date PyYAML cannot build
        "window:\n  max_length: !!float four\n  stride: 1\n",
        "window:\n  max_length: " + "[" * 5000 + "]" * 5000 + "\n  stride: 1\n",  # deeper than Python recurses
        "window: !!python/object/apply:os.system [echo hi]\n",  # safe_load refuses to run it
        "window:\n  ? [1, 2]\n  : 3\n",  # a key that cannot be hashed
    ],
    ids=["impossible-date", "bad-float", "deep-nesting", "python-tag", "list-key"],
)
def test_yaml_that_cannot_be_loaded_is_one_error_line(tmp_path, content):
    path = tmp_path / "params.yaml"
    path.write_text(content)

    with pytest.raises(PipelineError, match="is not valid YAML") as error:
        load_params("window", stage_module("window").SCHEMA, path)

    assert "\n" not in str(error.value)


def aliased_params(depth: int, value: str = "window:\n  max_length: *a{depth}\n  stride: 1\n") -> str:
    """params.yaml with a value nested `depth` deep, nine references to nine references ... (billion laughs)."""
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [
        f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, depth + 1)
    ]
    return "bomb:\n" + "".join(f"  {line}\n" for line in levels) + value.format(depth=depth)


def test_a_self_nested_value_is_shown_short(tmp_path):
    """A self-nested value under the expansion limit is never expanded into the message."""
    path = tmp_path / "params.yaml"
    path.write_text(aliased_params(3))

    with pytest.raises(PipelineError, match="window.max_length must be a positive integer") as error:
        load_params("window", stage_module("window").SCHEMA, path)

    assert len(str(error.value)) < 300


def test_an_alias_bomb_is_refused_before_any_value_is_read(tmp_path):
    """Nine levels expand to 9**10 values: DVC would expand them until memory ran out; load_params counts only up to
    its limit, and says so in one short line."""
    path = tmp_path / "params.yaml"
    path.write_text(aliased_params(9))

    with pytest.raises(PipelineError, match="YAML aliases are expanded") as error:
        load_params("window", stage_module("window").SCHEMA, path)

    assert len(str(error.value)) < 300


@pytest.mark.parametrize("key", [7, None, "strde\nx"])
def test_an_unknown_key_that_is_not_plain_text_is_named_in_one_line(tmp_path, key):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"window": {"max_length": 4, "stride": 1, key: 1}}))

    with pytest.raises(PipelineError, match="unknown key window.") as error:
        load_params("window", stage_module("window").SCHEMA, path)

    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("section", "values", "fragment"),
    [
        ("window", {"stride": 2**64}, "window.stride must be a positive integer up to"),
        ("dataset", {"seed": 2**64}, "dataset.seed must be a non-negative integer up to"),
        ("embed", {"dim": 10**9}, "GiB, over the"),
        ("sweep", {"configs": [[4, 2**70]]}, "sweep.configs stride must be a positive integer up to"),
    ],
)
def test_hostile_values_end_to_end_are_one_error_line_and_keep_the_outputs(chain, tmp_path, section, values, fragment):
    project = copy_project(chain, tmp_path / "project")
    before = {p: p.read_bytes() for p in sorted((project / "data").rglob("*")) if p.is_file()}
    set_params(project, {section: values})

    assert_one_line_error(run_stage(section, project), fragment)
    assert {p: p.read_bytes() for p in sorted((project / "data").rglob("*")) if p.is_file()} == before


def test_params_yaml_that_is_a_list_is_one_error_line(chain, tmp_path):
    project = copy_project(chain, tmp_path / "project")
    (project / "params.yaml").write_text("- window\n- embed\n")
    shutil.rmtree(project / "data" / "windows")

    assert_one_line_error(run_stage("window", project), "has no 'window:' mapping")
    assert not (project / "data" / "windows").exists()


def limit_memory() -> None:
    """Run in the child before the stage: 2 GiB of address space, so reading without end fails fast."""
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def test_a_device_as_the_ranks_file_is_one_error_line(chain, tmp_path):
    project = copy_project(chain, tmp_path / "project")
    set_params(project, {"tokenize": {"encoding": "/dev/zero"}})

    result = subprocess.run(
        stage_command("tokenize"),
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit_memory,
    )

    assert_one_line_error(result, "/dev/zero")
