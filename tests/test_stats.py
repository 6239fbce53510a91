"""Stage stats: token frequencies (top tokens, decoded) and the rank-frequency table behind the Zipf plot."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest
import yaml
from conftest import assert_one_line_error, copy_project, run_stage, set_params, snapshot

from llmpipe.counts import label, rank_frequency, ranked, token_counts, top_tokens
from llmpipe.formats import load_tokens
from llmpipe.tokenizer import load_encoding


@pytest.mark.parametrize("chunk", [1, 3, 1 << 24])
def test_token_counts_match_a_plain_count_whatever_the_chunk(chunk):
    tokens = np.array([5, 1, 5, 0, 9, 5, 1, 9, 9, 9], dtype=np.uint16)

    counts = token_counts((tokens[i : i + chunk] for i in range(0, len(tokens), chunk)), vocab_size=12)

    assert counts.shape == (12,)
    assert dict(enumerate(counts.tolist())) == {i: Counter(tokens.tolist())[i] for i in range(12)}


def test_ranked_is_most_frequent_first_ties_by_id_and_skips_absent_ids():
    counts = np.array([0, 2, 7, 2, 0, 7, 1])

    assert ranked(counts).tolist() == [2, 5, 1, 3, 6]


def test_labels_show_spaces_and_line_breaks(tiny_ranks):
    encoding = load_encoding(str(tiny_ranks))
    (the,) = encoding.encode_ordinary(" the")

    assert label(encoding, the) == "␣the"
    assert label(encoding, ord("\n")) == "↵"
    assert label(encoding, 0xC3) == "\N{REPLACEMENT CHARACTER}"  # half of a UTF-8 character


def test_top_tokens_and_rank_frequency_tables(tiny_ranks):
    encoding = load_encoding(str(tiny_ranks))
    tokens = np.array(encoding.encode_ordinary("the the the and and"), dtype=np.uint16)
    counts = token_counts([tokens], encoding.n_vocab)

    top = top_tokens(counts, encoding, 2)
    zipf = rank_frequency(counts)

    assert list(top.columns) == ["rank", "token_id", "token", "count"]
    assert top["rank"].tolist() == [1, 2]
    assert top.token.tolist() == ["␣the", "␣and"] and top["count"].tolist() == [2, 2]
    assert list(zipf.columns) == ["rank", "count"]
    assert zipf["rank"].tolist() == list(range(1, len(set(tokens.tolist())) + 1))
    assert zipf["count"].tolist() == sorted(Counter(tokens.tolist()).values(), reverse=True)
    assert len(top_tokens(counts, encoding, 1000)) == len(zipf)  # fewer distinct tokens than asked for: all


@pytest.fixture(scope="module")
def stats_project(chain, tmp_path_factory):
    """A copy of the built chain on which the stats stage has run."""
    project = copy_project(chain, tmp_path_factory.mktemp("stats") / "project")
    result = run_stage("stats", project)
    assert result.returncode == 0, result.stderr
    return project


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def test_stats_stage_writes_the_tables_and_metrics(stats_project):
    tokens, meta = load_tokens(stats_project / "data" / "tokens")
    counts = Counter(tokens.tolist())
    encoding = load_encoding(meta["encoding"])
    top_n = yaml.safe_load((stats_project / "params.yaml").read_text())["stats"]["top_tokens"]

    top = read_csv(stats_project / "metrics" / "token_freq.csv")
    zipf = read_csv(stats_project / "metrics" / "zipf.csv")
    metrics = json.loads((stats_project / "metrics" / "stats.json").read_text())

    assert len(top) == min(top_n, len(counts))
    assert [int(row["count"]) for row in top] == sorted(counts.values(), reverse=True)[: len(top)]
    for row in top:
        assert int(row["count"]) == counts[int(row["token_id"])]
        assert row["token"] == label(encoding, int(row["token_id"]))
    assert [int(row["count"]) for row in zipf] == sorted(counts.values(), reverse=True)
    assert metrics == {
        "num_tokens": len(tokens),
        "distinct_tokens": len(counts),
        "top_token": top[0]["token"],
        "top_token_count": int(top[0]["count"]),
    }


def test_stats_stage_is_deterministic(stats_project, tmp_path):
    project = copy_project(stats_project, tmp_path / "project")
    before = snapshot(project, "metrics/token_freq.csv", "metrics/zipf.csv", "metrics/stats.json")

    assert run_stage("stats", project).returncode == 0
    assert snapshot(project, "metrics/token_freq.csv", "metrics/zipf.csv", "metrics/stats.json") == before


def test_stats_stage_with_a_bad_top_tokens_is_one_error_line(stats_project, tmp_path):
    project = copy_project(stats_project, tmp_path / "project")
    set_params(project, {"stats": {"top_tokens": 0}})
    before = snapshot(project, "metrics/token_freq.csv", "metrics/zipf.csv", "metrics/stats.json")

    result = run_stage("stats", project)

    assert_one_line_error(result, "stats.top_tokens must be a positive integer, got 0")
    assert snapshot(project, "metrics/token_freq.csv", "metrics/zipf.csv", "metrics/stats.json") == before
