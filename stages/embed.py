"""Stage embed: token and absolute positional embeddings (the book's sections 2.7 and 2.8).

As in the book: seed torch, make the token embedding layer, then the positional one, look up the first
two windows, then add positional embeddings to one batch of token embeddings: the chapter's end point.
"""

from pathlib import Path

import numpy as np
import torch

from llmpipe.cli import run
from llmpipe.data import create_dataloader
from llmpipe.embeddings import check_ids, check_size, embedding_layers, input_embeddings, positional_context
from llmpipe.files import output_dir
from llmpipe.formats import EMBEDDINGS_FILE, NUM_SAMPLE_WINDOWS, save_tensors, write_metrics
from llmpipe.params import load_params, non_negative_int, positive_int, positive_int_or_null

SCHEMA = {"dim": positive_int, "context_length": positive_int_or_null, "seed": non_negative_int}


def main(dataset_dir: Path, embeddings_dir: Path) -> None:
    params = load_params("embed", SCHEMA)
    loader = create_dataloader(dataset_dir)
    vocab_size, max_length = loader.dataset.vocab_size, loader.dataset.max_length
    context_length = positional_context(params["context_length"], max_length)
    # The first windows' inputs (fewer when the corpus has fewer windows), and the first batch's.
    sample_ids = torch.from_numpy(loader.dataset.windows[:NUM_SAMPLE_WINDOWS, :-1].astype(np.int64))
    batch_ids, _ = next(iter(loader))
    check_ids(torch.cat([sample_ids.flatten(), batch_ids.flatten()]), vocab_size, dataset_dir)
    check_size(vocab_size, context_length, params["dim"], len(batch_ids), max_length)
    token_embedding, pos_embedding = embedding_layers(vocab_size, context_length, params["dim"], params["seed"])
    with torch.no_grad():
        tensors = {
            "token_embedding.weight": token_embedding.weight.detach(),
            "pos_embedding.weight": pos_embedding.weight.detach(),
            "sample_embeddings": token_embedding(sample_ids),
            "input_embeddings": input_embeddings(batch_ids, token_embedding, pos_embedding),
        }
    with output_dir(embeddings_dir) as tmp:
        save_tensors(tensors, tmp / EMBEDDINGS_FILE)
    shapes = ("token_embedding_shape", "pos_embedding_shape", "sample_embedding_shape", "input_embedding_shape")
    write_metrics(
        Path("metrics/embed.json"), {key: list(t.shape) for key, t in zip(shapes, tensors.values(), strict=True)}
    )


if __name__ == "__main__":
    run(main)
