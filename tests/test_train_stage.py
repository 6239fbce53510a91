"""The train and probe stages on the small chain project: outputs, byte-identical reruns, and bad input.

One module fixture trains once (the chain with a validation split, a tiny GPT); tests that change anything work
on copies of it.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import assert_one_line_error, copy_project, run_ok, run_stage, set_params, snapshot

from llmpipe.data import create_dataloader
from llmpipe.formats import (
    EMBEDDINGS_FILE,
    TRAINED_EMBEDDINGS_FILE,
    load_embeddings,
    load_model,
    load_trained_embeddings,
)
from llmpipe.model import load_gpt

TINY_TRAIN = {
    "n_layers": 1,
    "n_heads": 2,
    "drop_rate": 0.1,
    "qkv_bias": True,
    "lr": 0.003,
    "weight_decay": 0.1,
    "max_steps": 30,
    "epochs": None,
    "eval_every": 10,
    "eval_batches": 2,
    "seed": 123,
    "device": "cpu",
    "threads": 1,
}
# Single tokens of the chain's tiny BPE, all in its training split.
TINY_PROBE = {"words": [" the", " and", " a", " t"], "neighbours": 3, "num_tokens": 30, "window": 2}
OUTPUTS = ("data/model", "metrics/train")
PROBE_OUTPUTS = ("metrics/probe.json", "metrics/probe_pca.csv", "data/probe/neighbours.md")


@pytest.fixture(scope="module")
def trained(chain, tmp_path_factory):
    """The chain with a 20% validation split, dataset and embed rerun, then train and probe run once."""
    project = copy_project(chain, tmp_path_factory.mktemp("trained") / "project")
    set_params(project, {"dataset": {"val_fraction": 0.2}, "train": TINY_TRAIN, "probe": TINY_PROBE})
    for stage in ("dataset", "embed", "train", "probe"):
        run_ok(stage, project)
    return project


@pytest.fixture
def trained_copy(trained, tmp_path):
    return copy_project(trained, tmp_path / "project")


def summary(project) -> dict:
    return json.loads((project / "metrics/train/metrics.json").read_text())


def history(project, name: str) -> list[tuple[int, float]]:
    lines = (project / "metrics/train/plots/metrics" / f"{name}.tsv").read_text().splitlines()
    assert lines[0] == f"step\t{name}"  # no timestamp column: the history is byte-identical on a rerun
    return [(int(step), float(value)) for step, value in (line.split("\t") for line in lines[1:])]


def test_train_writes_the_model_its_embeddings_and_dvclive_metrics(trained):
    metrics = summary(trained)
    assert metrics["step"] == 30
    assert metrics["tokens_seen"] == 30 * 5 * 6  # steps x batch_size x max_length
    for key in ("train_loss", "val_loss", "val_perplexity", "unigram_val_loss", "bigram_val_loss"):
        assert math.isfinite(metrics[key]) and metrics[key] > 0, key
    assert metrics["val_perplexity"] == pytest.approx(math.exp(metrics["val_loss"]))
    # Evaluated at step 0, every eval_every steps, and at the last: the loss falls from about ln(vocab_size).
    val = history(trained, "val_loss")
    assert [step for step, _ in val] == [0, 10, 20, 30]
    assert [step for step, _ in history(trained, "tokens_seen")] == [0, 10, 20, 30]
    assert {value for _, value in history(trained, "lr")} == {0.003}
    train = history(trained, "train_loss")
    vocab_size = create_dataloader(trained / "data/dataset").dataset.vocab_size
    assert train[0][1] == pytest.approx(math.log(vocab_size), abs=1.0)
    assert train[-1][1] < train[0][1] and val[-1][1] < val[0][1]
    assert metrics["initial_val_loss"] == val[0][1]

    state_dict, config = load_model(trained / "data/model")
    assert config == {"vocab_size": vocab_size, "context_length": 8, "emb_dim": 16, "n_heads": 2, "n_layers": 1,
                      "drop_rate": 0.1, "qkv_bias": True}  # fmt: skip
    model = load_gpt(trained / "data/model")
    assert sum(p.numel() for p in model.parameters()) == metrics["num_parameters"]
    inputs, _ = next(iter(create_dataloader(trained / "data/dataset", "val")))
    assert model(inputs).shape == (*inputs.shape, vocab_size)
    embeddings = load_trained_embeddings(trained / "data/model" / TRAINED_EMBEDDINGS_FILE)
    assert torch.equal(embeddings["token_embedding.weight"], state_dict["tok_emb.weight"])
    assert torch.equal(embeddings["pos_embedding.weight"], state_dict["pos_emb.weight"])
    # The embed stage's matrices are where training started, and they moved.
    initial = load_embeddings(trained / "data/embeddings" / EMBEDDINGS_FILE)
    assert initial["token_embedding.weight"].shape == embeddings["token_embedding.weight"].shape
    assert not torch.equal(initial["token_embedding.weight"], embeddings["token_embedding.weight"])


def test_the_model_starts_from_the_embed_stages_tensors(trained_copy):
    set_params(trained_copy, {"train": {"lr": 1e-12, "weight_decay": 0, "max_steps": 1}})
    run_ok("train", trained_copy)

    initial = load_embeddings(trained_copy / "data/embeddings" / EMBEDDINGS_FILE)
    state_dict, _ = load_model(trained_copy / "data/model")
    assert torch.allclose(state_dict["tok_emb.weight"], initial["token_embedding.weight"], atol=1e-9)
    assert torch.allclose(state_dict["pos_emb.weight"], initial["pos_embedding.weight"], atol=1e-9)


def test_a_rerun_gives_a_byte_identical_model_and_metrics(trained, trained_copy):
    before = snapshot(trained, *OUTPUTS, *PROBE_OUTPUTS)
    run_ok("train", trained_copy)
    run_ok("probe", trained_copy)

    assert snapshot(trained_copy, *OUTPUTS, *PROBE_OUTPUTS) == before


def test_progress_shows_steps_loss_and_tokens_per_second(trained_copy):
    out = run_ok("train", trained_copy).stdout

    assert "step 30/30" in out and "val loss" in out and "tokens/s" in out


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        ({"n_layers": 0}, ["train.n_layers"]),
        ({"n_heads": 0}, ["train.n_heads"]),
        ({"n_heads": 3}, ["train.n_heads 3 does not divide embed.dim 16"]),
        ({"max_steps": 0}, ["train.max_steps"]),
        ({"max_steps": None, "epochs": 0}, ["train.epochs"]),
        ({"max_steps": 10, "epochs": 2}, ["exactly one of train.max_steps and train.epochs"]),
        ({"max_steps": None}, ["exactly one of train.max_steps and train.epochs"]),
        ({"eval_every": 0}, ["train.eval_every"]),
        ({"eval_batches": -1}, ["train.eval_batches"]),
        ({"lr": 0}, ["train.lr"]),
        ({"lr": -0.001}, ["train.lr"]),
        ({"weight_decay": -1}, ["train.weight_decay"]),
        ({"drop_rate": 1}, ["train.drop_rate"]),
        ({"qkv_bias": "yes"}, ["train.qkv_bias"]),
        ({"device": "tpu"}, ["train.device", "'tpu'", "auto, cpu"]),
        ({"device": "cuda:7"}, ["train.device", "not available"]),
        ({"threads": 0}, ["train.threads"]),
        ({"threads": 5000}, ["train.threads is 5000"]),
        ({"n_layers": 10**9}, ["train.n_layers", "GiB", "limit"]),
        ({"seed": -1}, ["train.seed"]),
        ({"batch": 4}, ["unknown key train.batch"]),
    ],
)
def test_bad_train_params_give_one_error_line_and_keep_earlier_outputs(trained_copy, overrides, fragments):
    before = snapshot(trained_copy, *OUTPUTS)
    set_params(trained_copy, {"train": overrides})

    assert_one_line_error(run_stage("train", trained_copy), *fragments)
    assert snapshot(trained_copy, *OUTPUTS) == before


def test_a_validation_split_with_no_window_is_refused(trained_copy):
    before = snapshot(trained_copy, *OUTPUTS)
    set_params(trained_copy, {"dataset": {"val_fraction": 0}})
    run_ok("dataset", trained_copy)

    assert_one_line_error(run_stage("train", trained_copy), "no val windows", "dataset.val_fraction")
    assert snapshot(trained_copy, *OUTPUTS) == before


def test_a_context_shorter_than_max_length_is_refused(trained_copy):
    before = snapshot(trained_copy, *OUTPUTS)
    # The embeddings keep their 8 positions while the windows grow to 10 tokens.
    set_params(trained_copy, {"window": {"max_length": 10, "stride": 5}})
    run_ok("window", trained_copy)
    run_ok("dataset", trained_copy)

    assert_one_line_error(run_stage("train", trained_copy), "embed.context_length 8", "window.max_length 10")
    assert snapshot(trained_copy, *OUTPUTS) == before


def test_a_diverging_loss_stops_naming_the_step(trained_copy):
    before = snapshot(trained_copy, "data/model")
    set_params(trained_copy, {"train": {"lr": 1e38, "weight_decay": 0, "drop_rate": 0, "eval_every": 1}})

    result = run_stage("train", trained_copy)

    assert_one_line_error(result, "at step", "lower train.lr")
    assert snapshot(trained_copy, "data/model") == before


def test_a_tampered_model_is_refused_by_its_loader(trained_copy):
    path = trained_copy / "data/model/model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(Exception, match="sha256"):
        load_model(trained_copy / "data/model")
    config = trained_copy / "data/model/config.json"
    config.write_text(config.read_text().replace('"n_layers": 1', '"n_layers": "1"'))
    with pytest.raises(Exception, match="n_layers"):
        load_model(trained_copy / "data/model")


def test_probe_writes_the_table_the_scores_and_the_2d_map(trained):
    metrics = json.loads((trained / "metrics/probe.json").read_text())
    assert set(metrics) == {"initial_score", "trained_score", "num_words", "candidate_tokens"}
    assert -1 <= metrics["initial_score"] <= 1 and -1 <= metrics["trained_score"] <= 1
    assert metrics["num_words"] == 4
    table = (trained / "data/probe/neighbours.md").read_text().splitlines()
    assert table[2] == "| word | before training (embed stage) | after training (train stage) |"
    assert [row.split(" | ")[0] for row in table[4:]] == ["| `␣the`", "| `␣and`", "| `␣a`", "| `␣t`"]
    assert all(row.count("`") == 2 + 2 * 3 * 2 for row in table[4:])  # the word and 3 neighbours each side
    pca = (trained / "metrics/probe_pca.csv").read_text().splitlines()
    assert pca[0] == "word,embeddings,pc1,pc2"
    assert [line.split(",")[1] for line in pca[1:]] == ["initial"] * 4 + ["trained"] * 4


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        ({"words": []}, ["probe.words"]),
        ({"words": [" the", " the"]}, ["probe.words", "twice"]),
        ({"words": [" lighthouse"]}, ["probe.words", "tokens, not one"]),
        ({"words": ["Q"]}, ["probe.words", "never occurs in the training split"]),
        ({"neighbours": 0}, ["probe.neighbours"]),
        ({"num_tokens": 0}, ["probe.num_tokens"]),
        ({"window": 0}, ["probe.window"]),
    ],
)
def test_bad_probe_params_give_one_error_line_and_keep_earlier_outputs(trained_copy, overrides, fragments):
    before = snapshot(trained_copy, *PROBE_OUTPUTS)
    set_params(trained_copy, {"probe": overrides})

    assert_one_line_error(run_stage("probe", trained_copy), *fragments)
    assert snapshot(trained_copy, *PROBE_OUTPUTS) == before
