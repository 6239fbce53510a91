"""The baseline: the book's chapter 2 code, as its notebook runs it (GPTDatasetV1 and create_dataloader_v1).

Run as a script (`python -m benchmarks.book CORPUS`), it is the whole chapter as one plain program:
read the text, tokenize, build the dataset and a batch, and embed it.
"""

from __future__ import annotations

import sys

import tiktoken
import torch
from torch.utils.data import DataLoader, Dataset


class GPTDatasetV1(Dataset):
    """The book's dataset: every window materialised up front as a pair of int64 tensors."""

    def __init__(self, txt, tokenizer, max_length, stride):
        self.input_ids = []
        self.target_ids = []
        token_ids = tokenizer.encode(txt, allowed_special={"<|endoftext|>"})
        for i in range(0, len(token_ids) - max_length, stride):
            input_chunk = token_ids[i : i + max_length]
            target_chunk = token_ids[i + 1 : i + max_length + 1]
            self.input_ids.append(torch.tensor(input_chunk))
            self.target_ids.append(torch.tensor(target_chunk))

    def __len__(self):
        return len(self.input_ids)

    def __getitem__(self, idx):
        return self.input_ids[idx], self.target_ids[idx]


def create_dataloader_v1(txt, batch_size=4, max_length=256, stride=128, shuffle=True, drop_last=True, num_workers=0):
    tokenizer = tiktoken.get_encoding("gpt2")
    dataset = GPTDatasetV1(txt, tokenizer, max_length, stride)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=num_workers)


def notebook(corpus: str) -> None:
    """Chapter 2 end to end with the pipeline's default params."""
    with open(corpus, encoding="utf-8") as f:
        raw_text = f.read()
    torch.manual_seed(123)
    dataloader = create_dataloader_v1(raw_text, batch_size=8, max_length=4, stride=1, shuffle=True)
    inputs, targets = next(iter(dataloader))
    token_embedding_layer = torch.nn.Embedding(50257, 256)
    pos_embedding_layer = torch.nn.Embedding(4, 256)
    input_embeddings = token_embedding_layer(inputs) + pos_embedding_layer(torch.arange(4))
    print(len(raw_text), len(dataloader.dataset), list(inputs.shape), list(input_embeddings.shape))


if __name__ == "__main__":
    notebook(sys.argv[1])
