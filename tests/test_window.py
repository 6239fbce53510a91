"""Stage window: the windows are the book's GPTDatasetV1 windows, as views, with a readable preview."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import CHAIN_WINDOW, CORPUS, assert_one_line_error, book_windows, run_stage, set_params, snapshot

from llmpipe.errors import PipelineError
from llmpipe.formats import load_tokens
from llmpipe.tokenizer import load_encoding, tokenize
from llmpipe.windows import NUM_PREVIEW, inputs_and_targets, preview, sliding_windows


@pytest.fixture
def tokens() -> np.ndarray:
    """37 ids (a length no stride below divides evenly), uint16 as tokenize stores them, some above 2**15."""
    return np.random.default_rng(0).integers(0, 50257, size=37, dtype=np.uint16)


@pytest.mark.parametrize(
    ("max_length", "stride"),
    [(4, 1), (4, 2), (8, 4), (4, 4), (3, 5), (1, 1), (36, 1)],
    ids=["4-1", "4-2", "8-4", "stride-equals-max_length", "stride-above-max_length", "1-1", "one-window"],
)
def test_windows_match_the_books_gptdatasetv1(tokens, max_length, stride):
    expected_inputs, expected_targets = book_windows(tokens.tolist(), max_length, stride)

    inputs, targets = inputs_and_targets(sliding_windows(tokens, max_length, stride))

    assert inputs.tolist() == expected_inputs
    assert targets.tolist() == expected_targets
    assert inputs.shape == targets.shape == (len(expected_inputs), max_length)


@pytest.mark.parametrize("max_length", [1, 4, 8])
def test_a_corpus_of_max_length_plus_one_tokens_gives_exactly_one_window(max_length):
    ids = np.arange(100, 100 + max_length + 1, dtype=np.uint16)

    inputs, targets = inputs_and_targets(sliding_windows(ids, max_length, stride=1))

    assert inputs.tolist() == [ids[:-1].tolist()] == book_windows(ids.tolist(), max_length, 1)[0]
    assert targets.tolist() == [ids[1:].tolist()]


def test_windows_are_a_read_only_view_of_the_tokens_not_a_copy(tokens):
    rows = sliding_windows(tokens, 4, 2)
    inputs, targets = inputs_and_targets(rows)

    for array in (rows, inputs, targets):
        assert np.shares_memory(array, tokens)
        assert array.dtype == tokens.dtype
    with pytest.raises(ValueError):
        rows[0, 0] = 1
    # A view sees later changes to the token array, which a copy would not.
    tokens[2] = 7
    assert rows[1, 0] == inputs[1, 0] == 7


@pytest.mark.parametrize("num_tokens", [0, 1, 4])
def test_fewer_than_max_length_plus_one_tokens_is_an_error_naming_max_length(num_tokens):
    with pytest.raises(PipelineError, match=r"max_length 4 needs at least 5 tokens but the corpus has") as error:
        sliding_windows(np.arange(num_tokens, dtype=np.uint16), 4, 1)
    assert f"has {num_tokens}" in str(error.value)


def test_preview_gives_ids_and_decoded_text_of_the_first_windows(tiny_ranks):
    encoding = load_encoding(str(tiny_ranks))
    ids, _ = tokenize([CORPUS], encoding)
    rows = sliding_windows(ids, 4, 2)

    table = preview(rows, 2, encoding)

    assert list(table.columns) == ["window", "start", "input_ids", "target_ids", "input_text", "target_text"]
    assert len(table) == NUM_PREVIEW
    inputs, targets = book_windows(ids.tolist(), 4, 2)
    for i, row in table.iterrows():
        assert (row.window, row.start) == (i, 2 * i)
        assert row.input_ids == " ".join(map(str, inputs[i]))
        assert row.target_ids == " ".join(map(str, targets[i]))
        assert row.input_text == encoding.decode(inputs[i])
        assert row.target_text == encoding.decode(targets[i])
    assert table.input_text[0] == encoding.decode(ids[:4].tolist())
    assert CORPUS.startswith(table.input_text[0])


def test_preview_of_back_to_back_windows_reads_as_the_start_of_the_text(tiny_ranks):
    encoding = load_encoding(str(tiny_ranks))
    ids, _ = tokenize([CORPUS], encoding)

    table = preview(sliding_windows(ids, 5, 5), 5, encoding, count=6)

    assert len(table) == 6
    assert "".join(table.input_text) == encoding.decode(ids[:30].tolist())
    assert CORPUS.startswith("".join(table.input_text))


def test_preview_stops_at_the_last_window(tiny_ranks):
    encoding = load_encoding(str(tiny_ranks))
    ids, _ = tokenize(["the cat sat on the mat"], encoding)
    rows = sliding_windows(ids, len(ids) - 2, 1)

    table = preview(rows, 1, encoding)

    assert len(table) == len(rows) == 2


def test_window_stage_writes_geometry_preview_and_metrics(chain):
    tokens, meta = load_tokens(chain / "data" / "tokens")
    expected_inputs, expected_targets = book_windows(
        tokens.tolist(), CHAIN_WINDOW["max_length"], CHAIN_WINDOW["stride"]
    )

    geometry = json.loads((chain / "data" / "windows" / "windows.json").read_text())
    assert geometry == {**CHAIN_WINDOW, "num_windows": len(expected_inputs), "num_tokens": meta["num_tokens"]}

    with open(chain / "data" / "windows" / "preview.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == NUM_PREVIEW
    assert [row["input_ids"] for row in rows] == [" ".join(map(str, ids)) for ids in expected_inputs[:NUM_PREVIEW]]
    assert [row["target_ids"] for row in rows] == [" ".join(map(str, ids)) for ids in expected_targets[:NUM_PREVIEW]]
    assert [int(row["start"]) for row in rows] == [i * CHAIN_WINDOW["stride"] for i in range(NUM_PREVIEW)]

    metrics = json.loads((chain / "metrics" / "window.json").read_text())
    assert metrics["num_windows"] == len(expected_inputs)
    assert metrics["num_tokens"] == len(tokens)
    assert json.loads(metrics["first_input"]) == expected_inputs[0]
    assert json.loads(metrics["first_target"]) == expected_targets[0]


@pytest.mark.parametrize(
    ("window_params", "fragments"),
    [
        ({"max_length": 0}, ["window.max_length must be a positive integer", "0"]),
        ({"stride": "2"}, ["window.stride must be a positive integer", "'2'"]),
        ({"strides": 2}, ["unknown key window.strides"]),
    ],
    ids=["max_length-0", "stride-string", "misspelled-key"],
)
def test_bad_window_params_give_one_error_line_and_leave_outputs_alone(chain_copy, window_params, fragments):
    project = chain_copy
    set_params(project, {"window": window_params})
    before = snapshot(project, "data/windows", "metrics/window.json")

    result = run_stage("window", project)

    assert_one_line_error(result, *fragments)
    assert snapshot(project, "data/windows", "metrics/window.json") == before


def test_window_stage_on_too_short_a_corpus_fails_in_one_line(chain_copy):
    project = chain_copy
    num_tokens = json.loads((project / "data" / "tokens" / "index.json").read_text())["num_tokens"]
    set_params(project, {"window": {"max_length": num_tokens}})
    before = snapshot(project, "data/windows", "metrics/window.json")

    result = run_stage("window", project)

    assert_one_line_error(result, f"max_length {num_tokens} needs at least {num_tokens + 1} tokens")
    assert snapshot(project, "data/windows", "metrics/window.json") == before
