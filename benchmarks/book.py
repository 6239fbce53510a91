"""The baseline: the book's chapter 2 as one plain script, on the book's own package (llms_from_scratch.ch02).

    python -m benchmarks.book CORPUS

Reads the text, builds create_dataloader_v1's dataset and a batch, and embeds it, with the pipeline's default params
(batch 8, max_length 4, stride 1, dim 256). Prints the text length, the number of windows and the two shapes.
"""

from __future__ import annotations

import sys

import torch
from llms_from_scratch.ch02 import create_dataloader_v1


def notebook(corpus: str) -> None:
    """Chapter 2 end to end, as the notebook runs it."""
    with open(corpus, encoding="utf-8") as f:
        raw_text = f.read()
    torch.manual_seed(123)
    dataloader = create_dataloader_v1(raw_text, batch_size=8, max_length=4, stride=1, shuffle=True)
    inputs, _ = next(iter(dataloader))
    token_embedding_layer = torch.nn.Embedding(50257, 256)
    pos_embedding_layer = torch.nn.Embedding(4, 256)
    input_embeddings = token_embedding_layer(inputs) + pos_embedding_layer(torch.arange(4))
    print(len(raw_text), len(dataloader.dataset), list(inputs.shape), list(input_embeddings.shape))


if __name__ == "__main__":
    notebook(sys.argv[1])
