"""Token and absolute positional embeddings (the book's sections 2.7 and 2.8)."""

from __future__ import annotations

import torch

from llmpipe.errors import PipelineError
from llmpipe.formats import NUM_SAMPLE_WINDOWS

# Ample for the book (51 MB) or GPT-2 XL's embedding (0.3 GB); a typo like dim: 2560000 stops here,
# with a message, rather than in the kernel's OOM killer.
MAX_EMBEDDING_BYTES = 4 << 30


def embedding_layers(
    vocab_size: int, context_length: int, dim: int, seed: int
) -> tuple[torch.nn.Embedding, torch.nn.Embedding]:
    """The token and positional embedding layers, initialised from `seed` in the book's order."""
    torch.manual_seed(seed)
    return torch.nn.Embedding(vocab_size, dim), torch.nn.Embedding(context_length, dim)


def input_embeddings(
    input_ids: torch.Tensor, token_embedding: torch.nn.Embedding, pos_embedding: torch.nn.Embedding
) -> torch.Tensor:
    """Token embeddings plus the positional embedding of each position: shape (batch, seq_len, dim)."""
    return token_embedding(input_ids) + pos_embedding(torch.arange(input_ids.shape[-1]))


def positional_context(context_length: int | None, max_length: int) -> int:
    """The positional embedding's length: embed.context_length, or max_length when it is null, as the book sets it.

    Raises PipelineError when an explicit context_length is shorter than max_length.
    """
    if context_length is None:
        return max_length
    if context_length < max_length:
        raise PipelineError(
            f"embed.context_length {context_length} is shorter than window.max_length {max_length}: "
            f"raise embed.context_length to at least {max_length}, or set it to null to follow max_length"
        )
    return context_length


def check_size(vocab_size: int, context_length: int, dim: int, batch_size: int, max_length: int) -> None:
    """Refuse float32 tensors (both weight matrices, the samples and one batch) over MAX_EMBEDDING_BYTES.

    Raises PipelineError naming embed.dim and embed.context_length.
    """
    rows = vocab_size + context_length + (NUM_SAMPLE_WINDOWS + batch_size) * max_length
    size = rows * dim * torch.float32.itemsize
    if size > MAX_EMBEDDING_BYTES:
        raise PipelineError(
            f"embed.dim {dim} with embed.context_length {context_length} and a vocabulary of {vocab_size} needs "
            f"{size / (1 << 30):,.1f} GiB, over the {MAX_EMBEDDING_BYTES >> 30} GiB limit: "
            "lower embed.dim or embed.context_length"
        )


def check_ids(ids: torch.Tensor, vocab_size: int, where: str) -> None:
    """An id outside [0, vocab_size), at either end, means an edited dataset: say so rather than fail in the
    lookup with an IndexError. Pass every id the embedding will look up; none (an empty tensor) passes.

    Raises PipelineError naming `where` (the dataset folder).
    """
    if ids.numel() == 0:
        return
    smallest, largest = int(ids.min()), int(ids.max())
    if smallest < 0 or largest >= vocab_size:
        bad = smallest if smallest < 0 else largest
        raise PipelineError(
            f"{where} holds token id {bad}, outside its vocabulary of {vocab_size}, so it is corrupt: "
            "run `dvc checkout` or `dvc repro -f dataset`"
        )
