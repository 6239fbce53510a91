"""Stage embed: seeded token and positional embedding layers, and the chapter's input embeddings."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import (
    CHAIN_DATASET,
    CHAIN_EMBED,
    CHAIN_WINDOW,
    assert_one_line_error,
    copy_project,
    run_stage,
    set_params,
    snapshot,
)
from safetensors.torch import load_file

from llmpipe.data import create_dataloader
from llmpipe.embeddings import embedding_layers, input_embeddings

EMBEDDINGS = "data/embeddings/embeddings.safetensors"


def test_same_seed_gives_identical_layers_and_another_seed_different_ones():
    token_a, pos_a = embedding_layers(50, 6, 8, seed=7)
    torch.manual_seed(999)  # whatever ran before must not matter
    token_b, pos_b = embedding_layers(50, 6, 8, seed=7)
    token_c, pos_c = embedding_layers(50, 6, 8, seed=8)

    assert torch.equal(token_a.weight, token_b.weight)
    assert torch.equal(pos_a.weight, pos_b.weight)
    assert not torch.equal(token_a.weight, token_c.weight)
    assert not torch.equal(pos_a.weight, pos_c.weight)


def test_layer_shapes_are_vocab_by_dim_and_context_length_by_dim():
    token_embedding, pos_embedding = embedding_layers(vocab_size=271, context_length=5, dim=12, seed=0)

    assert token_embedding.weight.shape == (271, 12)
    assert pos_embedding.weight.shape == (5, 12)


def test_the_two_layers_are_initialised_differently():
    token_embedding, pos_embedding = embedding_layers(vocab_size=4, context_length=4, dim=3, seed=0)

    assert not torch.equal(token_embedding.weight, pos_embedding.weight)


def test_layers_match_the_books_with_the_books_values():
    torch.manual_seed(123)
    book_token = torch.nn.Embedding(50257, 256)
    book_pos = torch.nn.Embedding(4, 256)

    token_embedding, pos_embedding = embedding_layers(vocab_size=50257, context_length=4, dim=256, seed=123)

    assert torch.equal(token_embedding.weight, book_token.weight)
    assert torch.equal(pos_embedding.weight, book_pos.weight)


@pytest.mark.parametrize("seq_len", [1, 3, 6])
def test_input_embeddings_add_the_positional_row_of_each_position(seq_len):
    token_embedding, pos_embedding = embedding_layers(vocab_size=30, context_length=6, dim=5, seed=3)
    ids = torch.randint(0, 30, (4, seq_len), generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        result = input_embeddings(ids, token_embedding, pos_embedding)
        difference = result - token_embedding(ids)

    assert result.shape == (4, seq_len, 5)
    expected = pos_embedding.weight[:seq_len].detach().expand(4, seq_len, 5)
    torch.testing.assert_close(difference, expected)


def test_input_embeddings_longer_than_the_context_length_fail():
    token_embedding, pos_embedding = embedding_layers(vocab_size=30, context_length=4, dim=5, seed=3)

    with pytest.raises(IndexError):
        input_embeddings(torch.zeros(2, 5, dtype=torch.long), token_embedding, pos_embedding)


@pytest.fixture(scope="module")
def saved(chain):
    return load_file(chain / EMBEDDINGS)


def test_embed_stage_saves_the_weights_and_both_results(chain, saved):
    vocab_size = json.loads((chain / "data" / "dataset" / "dataset.json").read_text())["vocab_size"]
    dim, context_length = CHAIN_EMBED["dim"], CHAIN_EMBED["context_length"]
    max_length, batch_size = CHAIN_WINDOW["max_length"], CHAIN_DATASET["batch_size"]

    assert set(saved) == {"token_embedding.weight", "pos_embedding.weight", "sample_embeddings", "input_embeddings"}
    assert saved["token_embedding.weight"].shape == (vocab_size, dim)
    assert saved["pos_embedding.weight"].shape == (context_length, dim)
    assert saved["sample_embeddings"].shape == (2, max_length, dim)
    assert saved["input_embeddings"].shape == (batch_size, max_length, dim)
    assert vocab_size == 256 + 14 + 1  # the tiny BPE: bytes, merges, end-of-text


def test_saved_weights_are_the_seeded_layers(chain, saved):
    vocab_size = json.loads((chain / "data" / "dataset" / "dataset.json").read_text())["vocab_size"]
    token_embedding, pos_embedding = embedding_layers(
        vocab_size, CHAIN_EMBED["context_length"], CHAIN_EMBED["dim"], CHAIN_EMBED["seed"]
    )

    assert torch.equal(saved["token_embedding.weight"], token_embedding.weight)
    assert torch.equal(saved["pos_embedding.weight"], pos_embedding.weight)


def test_saved_results_are_the_first_windows_and_the_first_batch_embedded(chain, saved):
    loader = create_dataloader(chain / "data" / "dataset")
    token_embedding = torch.nn.Embedding.from_pretrained(saved["token_embedding.weight"])
    pos_embedding = torch.nn.Embedding.from_pretrained(saved["pos_embedding.weight"])
    sample_ids = torch.stack([loader.dataset[0][0], loader.dataset[1][0]])
    batch_ids, _ = next(iter(loader))

    torch.testing.assert_close(saved["sample_embeddings"], token_embedding(sample_ids))
    torch.testing.assert_close(saved["input_embeddings"], input_embeddings(batch_ids, token_embedding, pos_embedding))


def test_embed_metrics_record_the_shapes(chain, saved):
    metrics = json.loads((chain / "metrics" / "embed.json").read_text())

    assert json.loads(metrics["token_embedding_shape"]) == list(saved["token_embedding.weight"].shape)
    assert json.loads(metrics["pos_embedding_shape"]) == list(saved["pos_embedding.weight"].shape)
    assert json.loads(metrics["sample_embedding_shape"]) == list(saved["sample_embeddings"].shape)
    assert json.loads(metrics["input_embedding_shape"]) == list(saved["input_embeddings"].shape)


def test_a_second_embed_run_writes_byte_identical_embeddings(chain, tmp_path):
    project = copy_project(chain, tmp_path / "project")
    (project / EMBEDDINGS).unlink()

    result = run_stage("embed", project)

    assert result.returncode == 0, result.stderr
    assert (project / EMBEDDINGS).read_bytes() == (chain / EMBEDDINGS).read_bytes()


def test_context_length_below_max_length_is_one_error_line(chain, tmp_path):
    project = copy_project(chain, tmp_path / "project")
    set_params(project, {"embed": {"context_length": CHAIN_WINDOW["max_length"] - 1}})
    before = snapshot(project, "data/embeddings", "metrics/embed.json")

    result = run_stage("embed", project)

    assert_one_line_error(
        result,
        f"embed.context_length {CHAIN_WINDOW['max_length'] - 1} is shorter than window.max_length "
        f"{CHAIN_WINDOW['max_length']}",
    )
    assert snapshot(project, "data/embeddings", "metrics/embed.json") == before


def test_a_null_context_length_follows_max_length_as_the_book_does(chain, tmp_path):
    project = copy_project(chain, tmp_path / "project")
    set_params(project, {"embed": {"context_length": None}})

    result = run_stage("embed", project)

    assert result.returncode == 0, result.stderr
    saved = load_file(project / EMBEDDINGS)
    assert saved["pos_embedding.weight"].shape == (CHAIN_WINDOW["max_length"], CHAIN_EMBED["dim"])
