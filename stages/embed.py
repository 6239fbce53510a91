"""Stage embed: token and absolute positional embeddings (the book's sections 2.7 and 2.8).

As in the book: seed torch, make the token embedding layer, then the positional one, look up the first
two windows, then add positional embeddings to one batch of token embeddings: the chapter's end point.
data/embeddings/embeddings.safetensors holds the two weight matrices and both results.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from stages.common import (
    PipelineError,
    load_params,
    non_negative_int,
    output_dir,
    positive_int,
    read_json,
    run,
    write_metrics,
)
from stages.dataset import DATASET_FILE, create_dataloader
from stages.dataset import OUT_DIR as DATASET_DIR

OUT_DIR = Path("data/embeddings")
EMBEDDINGS_FILE = "embeddings.safetensors"
NUM_SAMPLE_WINDOWS = 2

SCHEMA = {"dim": positive_int, "context_length": positive_int, "seed": non_negative_int}


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


def main() -> None:
    params = load_params("embed", SCHEMA)
    config = read_json(DATASET_DIR / DATASET_FILE)
    if params["context_length"] < config["max_length"]:
        raise PipelineError(
            f"embed.context_length {params['context_length']} is shorter than window.max_length "
            f"{config['max_length']}: raise embed.context_length to at least {config['max_length']}"
        )
    loader = create_dataloader(DATASET_DIR)
    dataset = loader.dataset
    token_embedding, pos_embedding = embedding_layers(
        config["vocab_size"], params["context_length"], params["dim"], params["seed"]
    )
    with torch.no_grad():
        # The first windows' inputs (fewer when the corpus has fewer windows).
        sample = token_embedding(torch.from_numpy(dataset.windows[:NUM_SAMPLE_WINDOWS, :-1].astype(np.int64)))
        batch_ids, _ = next(iter(loader))
        batch = input_embeddings(batch_ids, token_embedding, pos_embedding)
    tensors = {
        "token_embedding.weight": token_embedding.weight.detach(),
        "pos_embedding.weight": pos_embedding.weight.detach(),
        "sample_embeddings": sample,
        "input_embeddings": batch,
    }
    with output_dir(OUT_DIR) as tmp:
        save_file({name: t.contiguous() for name, t in tensors.items()}, tmp / EMBEDDINGS_FILE)
    write_metrics(
        "embed",
        {
            "token_embedding_shape": list(token_embedding.weight.shape),
            "pos_embedding_shape": list(pos_embedding.weight.shape),
            "sample_embedding_shape": list(sample.shape),
            "input_embedding_shape": list(batch.shape),
        },
    )


if __name__ == "__main__":
    run(main)
