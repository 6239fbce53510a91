"""Stage sweep: window counts per (max_length, stride), counted and checked against the closed form."""

from __future__ import annotations

import csv
import json
import math

import pytest
from conftest import VERDICT, assert_one_line_error, book_windows, copy_project, run_stage, set_params, snapshot

from llmpipe.errors import PipelineError
from llmpipe.formats import load_tokens
from llmpipe.params import window_pairs
from llmpipe.tokenizer import load_encoding, tokenize
from llmpipe.windows import num_windows, sweep


def book_count(num_tokens: int, max_length: int, stride: int) -> int:
    """How many windows the book's GPTDatasetV1 makes."""
    return len(book_windows(list(range(num_tokens)), max_length, stride)[0])


PAIRS = [(4, 1), (4, 2), (8, 1), (8, 4), (4, 4), (3, 5), (1, 1), (40, 7), (49, 1), (49, 3)]


@pytest.mark.parametrize("num_tokens", [50, 51, 97])
def test_sweep_rows_equal_the_closed_form_and_the_books_count(num_tokens):
    table = sweep(num_tokens, PAIRS)

    assert list(table.columns) == ["max_length", "stride", "num_windows", "formula"]
    assert list(zip(table.max_length, table.stride, strict=True)) == PAIRS
    expected = [book_count(num_tokens, m, s) for m, s in PAIRS]
    assert table.num_windows.tolist() == expected
    assert table.formula.tolist() == [math.ceil((num_tokens - m) / s) for m, s in PAIRS] == expected


@pytest.mark.parametrize(("num_tokens", "max_length", "stride"), [(5, 4, 1), (5, 4, 9), (9, 4, 5), (10, 4, 5)])
def test_closed_form_matches_the_books_count_at_the_edges(num_tokens, max_length, stride):
    assert num_windows(num_tokens, max_length, stride) == book_count(num_tokens, max_length, stride)


def test_the_verdict_with_gpt2_gives_the_books_window_counts(gpt2_cache):
    tokens, _ = tokenize([VERDICT.read_text(encoding="utf-8")], load_encoding("gpt2"))

    table = sweep(len(tokens), [(4, 1), (4, 2), (8, 1), (8, 4)])

    assert len(tokens) == 5145
    assert table.num_windows.tolist() == [5141, 2571, 5137, 1285]
    assert table.formula.tolist() == [5141, 2571, 5137, 1285]


@pytest.mark.parametrize(
    "value",
    [[], [[4]], [[4, 0]], [4, 1], "x", [[4, "1"]], [[4, 1, 2]], [[True, 1]], [[4, 1], [0, 1]], None],
    ids=repr,
)
def test_malformed_configs_are_rejected(value):
    with pytest.raises(PipelineError, match="sweep.configs"):
        window_pairs("sweep.configs", value)


def test_configs_returns_the_pairs_as_tuples():
    assert window_pairs("sweep.configs", [[4, 1], [8, 4]]) == [(4, 1), (8, 4)]


@pytest.mark.parametrize("max_length", [10, 11, 100])
def test_a_max_length_reaching_the_token_count_is_an_error(max_length):
    with pytest.raises(PipelineError, match=f"max_length {max_length} needs at least"):
        sweep(10, [(4, 1), (max_length, 1)])


def test_max_length_one_below_the_token_count_gives_one_window():
    assert sweep(10, [(9, 1), (9, 4)]).num_windows.tolist() == [1, 1]


SWEEP_CONFIGS = [[4, 1], [4, 2], [6, 3], [3, 5]]


@pytest.fixture(scope="module")
def swept(chain, tmp_path_factory):
    """A copy of the built chain on which the sweep stage has run with SWEEP_CONFIGS."""
    project = copy_project(chain, tmp_path_factory.mktemp("sweep") / "project")
    set_params(project, {"sweep": {"configs": SWEEP_CONFIGS}})
    result = run_stage("sweep", project)
    assert result.returncode == 0, result.stderr
    return project


def test_sweep_stage_writes_the_csv(swept):
    tokens, _ = load_tokens(swept / "data" / "tokens")

    with open(swept / "metrics" / "sweep.csv", newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)

    assert reader.fieldnames == ["max_length", "stride", "num_windows", "formula"]
    assert [(int(r["max_length"]), int(r["stride"])) for r in rows] == [tuple(pair) for pair in SWEEP_CONFIGS]
    expected = [book_count(len(tokens), m, s) for m, s in SWEEP_CONFIGS]
    assert [int(r["num_windows"]) for r in rows] == expected
    assert [int(r["formula"]) for r in rows] == expected


def test_sweep_stage_writes_the_counts_as_metrics(swept):
    tokens, _ = load_tokens(swept / "data" / "tokens")

    metrics = json.loads((swept / "metrics" / "sweep.json").read_text())

    assert metrics == {
        "num_windows": {f"max_length_{m}_stride_{s}": book_count(len(tokens), m, s) for m, s in SWEEP_CONFIGS}
    }


def test_sweep_stage_with_bad_configs_is_one_error_line(swept, tmp_path):
    project = copy_project(swept, tmp_path / "project")
    set_params(project, {"sweep": {"configs": [[4, 1], [4]]}})
    before = snapshot(project, "metrics/sweep.csv", "metrics/sweep.json")

    result = run_stage("sweep", project)

    assert_one_line_error(result, "sweep.configs entry [4] is not a [max_length, stride] pair")
    assert snapshot(project, "metrics/sweep.csv", "metrics/sweep.json") == before
