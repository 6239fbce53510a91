"""llmpipe.model: the book's chapter-4 GPT, its config check and the device choice."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from llms_from_scratch.ch04 import GPTModel as BookGPTModel

from llmpipe.errors import PipelineError
from llmpipe.model import GPTConfig, GPTModel, check_config, pick_device

TINY = {"vocab_size": 50, "context_length": 8, "emb_dim": 16, "n_heads": 4, "n_layers": 2, "drop_rate": 0.1}


def book_and_ours(qkv_bias: bool) -> tuple[BookGPTModel, GPTModel]:
    """The book's model, randomly initialised, and ours holding its weights (loaded strictly)."""
    torch.manual_seed(0)
    book = BookGPTModel({**TINY, "qkv_bias": qkv_bias})
    ours = GPTModel(GPTConfig(**TINY, qkv_bias=qkv_bias))
    ours.load_state_dict(book.state_dict(), strict=True)
    return book, ours


@pytest.mark.parametrize("qkv_bias", [False, True])
@pytest.mark.parametrize("seq_len", [1, 5, 8])
def test_logits_equal_the_books_model_for_the_same_weights(qkv_bias, seq_len):
    book, ours = book_and_ours(qkv_bias)
    book.eval()
    ours.eval()
    in_idx = torch.randint(0, TINY["vocab_size"], (3, seq_len), generator=torch.Generator().manual_seed(1))

    with torch.no_grad():
        logits = ours(in_idx)
        expected = book(in_idx)

    assert logits.shape == (3, seq_len, TINY["vocab_size"])
    assert torch.equal(logits, expected)


def test_dropout_in_training_mode_draws_like_the_books_model():
    book, ours = book_and_ours(qkv_bias=False)
    in_idx = torch.randint(0, TINY["vocab_size"], (2, 8), generator=torch.Generator().manual_seed(2))

    torch.manual_seed(3)
    expected = book(in_idx)
    torch.manual_seed(3)
    logits = ours(in_idx)

    assert torch.equal(logits, expected)
    ours.eval()
    assert not torch.equal(ours(in_idx), expected)  # dropout did act in training mode


def test_state_dict_has_the_books_keys_and_loads_into_the_books_model():
    book, ours = book_and_ours(qkv_bias=True)

    assert list(ours.state_dict()) == list(book.state_dict())
    torch.manual_seed(9)
    fresh_book = BookGPTModel({**TINY, "qkv_bias": True})
    fresh_book.load_state_dict(ours.state_dict(), strict=True)
    assert all(
        torch.equal(a, b) for a, b in zip(fresh_book.state_dict().values(), ours.state_dict().values(), strict=True)
    )


def test_causal_mask_keeps_later_tokens_from_changing_earlier_logits():
    _, ours = book_and_ours(qkv_bias=False)
    ours.eval()
    in_idx = torch.tensor([[1, 2, 3, 4, 5, 6]])
    changed = in_idx.clone()
    changed[0, 4:] = torch.tensor([40, 41])

    with torch.no_grad():
        logits, changed_logits = ours(in_idx), ours(changed)

    assert torch.equal(logits[0, :4], changed_logits[0, :4])
    assert not torch.equal(logits[0, 4:], changed_logits[0, 4:])


def valid_config(**changes) -> GPTConfig:
    return dataclasses.replace(GPTConfig(**TINY, qkv_bias=False), **changes)


def test_heads_that_do_not_divide_the_width_name_both_params():
    with pytest.raises(PipelineError, match=r"train\.n_heads 3 does not divide embed\.dim 16"):
        check_config(valid_config(n_heads=3))
    with pytest.raises(PipelineError, match=r"train\.n_heads"):
        GPTModel(valid_config(n_heads=5))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"emb_dim": 0}, r"embed\.dim is 0"),
        ({"context_length": -4}, r"embed\.context_length is -4"),
        ({"n_layers": 2.0}, r"train\.n_layers is 2\.0"),
        ({"n_heads": True}, r"train\.n_heads is True"),
        ({"vocab_size": 0}, r"vocabulary size"),
        ({"drop_rate": 1.0}, r"train\.drop_rate is 1\.0.*\[0, 1\)"),
        ({"drop_rate": -0.1}, r"train\.drop_rate"),
        ({"drop_rate": float("nan")}, r"train\.drop_rate"),
        ({"qkv_bias": "yes"}, r"train\.qkv_bias"),
    ],
)
def test_impossible_values_raise_naming_the_param(change, named):
    with pytest.raises(PipelineError, match=named):
        check_config(valid_config(**change))


def test_a_valid_config_passes_and_the_config_is_frozen():
    config = valid_config(drop_rate=0.0, qkv_bias=True)
    check_config(config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.emb_dim = 32


def test_auto_picks_the_cpu_on_this_machine():
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has an accelerator")
    assert pick_device("auto") == torch.device("cpu")
    assert pick_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "mps"])
def test_an_unavailable_device_raises_naming_what_is_available(name):
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has an accelerator")
    with pytest.raises(
        PipelineError, match=r"train\.device is '.*', which is not available here: use one of auto, cpu$"
    ):
        pick_device(name)


@pytest.mark.parametrize("name", ["gpu", "CPU", "cuda:x", "cuda:", "", 0])
def test_an_unknown_device_name_raises(name):
    with pytest.raises(PipelineError, match=r"train\.device"):
        pick_device(name)
