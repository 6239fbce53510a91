"""Stage dataset: a PyTorch Dataset and DataLoader over the windows (the book's section 2.6).

data/dataset/ is self-contained, so training code needs nothing else:
  tokens.npy    the token ids, one flat uint16 (or uint32) array, the same bytes as data/tokens/tokens.npy
  dataset.json  window geometry (max_length, stride, num_windows) and loader settings
                (batch_size, shuffle, seed, drop_last), plus the encoding and vocab_size

Training code:  from stages.dataset import create_dataloader; loader = create_dataloader("data/dataset")
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from stages.common import (
    PipelineError,
    boolean,
    load_params,
    non_negative_int,
    output_dir,
    positive_int,
    read_json,
    run,
    write_json,
    write_metrics,
)
from stages.tokenize import OUT_DIR as TOKENS_DIR
from stages.tokenize import TOKENS_FILE, load_tokens
from stages.window import OUT_DIR as WINDOWS_DIR
from stages.window import WINDOWS_FILE, windows

OUT_DIR = Path("data/dataset")
DATASET_FILE = "dataset.json"
FORMAT = "ch2-token-windows/1"

SCHEMA = {"batch_size": positive_int, "shuffle": boolean, "seed": non_negative_int}


class TokenWindowDataset(Dataset):
    """(input_ids, target_ids) pairs sliced on demand from a memory-mapped token array.

    Memory is O(tokens), not O(windows x max_length): nothing is materialised until an item is asked
    for. The memmap is opened lazily and never pickled, so each DataLoader worker opens its own.
    """

    def __init__(self, tokens_path: str | Path, max_length: int, stride: int):
        self.tokens_path = Path(tokens_path)
        self.max_length = max_length
        self.stride = stride
        self._tokens = self._windows = None
        self.num_windows = len(self.windows)

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = np.load(self.tokens_path, mmap_mode="r", allow_pickle=False)
        return self._tokens

    @property
    def windows(self) -> np.ndarray:
        if self._windows is None:
            self._windows = windows(self.tokens, self.max_length, self.stride)
        return self._windows

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None, "_windows": None}

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = torch.from_numpy(self.windows[index].astype(np.int64))
        return row[:-1], row[1:]


def load_dataset(dataset_dir: str | Path = OUT_DIR) -> tuple[TokenWindowDataset, dict]:
    """The dataset in `dataset_dir` and its settings from dataset.json."""
    dataset_dir = Path(dataset_dir)
    config = read_json(dataset_dir / DATASET_FILE)
    if config.get("format") != FORMAT:
        raise PipelineError(f"{dataset_dir / DATASET_FILE} is not in format {FORMAT}: rebuild it with `dvc repro`")
    try:
        dataset = TokenWindowDataset(dataset_dir / config["tokens"], config["max_length"], config["stride"])
    except (OSError, ValueError, EOFError) as error:
        raise PipelineError(f"cannot read the tokens of {dataset_dir} ({error}): run `dvc checkout`") from None
    tokens = dataset.tokens
    if tokens.dtype != np.dtype(config["dtype"]) or len(tokens) != config["num_tokens"]:
        raise PipelineError(
            f"{dataset.tokens_path} holds {len(tokens)} {tokens.dtype} ids, not the {config['num_tokens']} "
            f"{config['dtype']} ids {DATASET_FILE} records: run `dvc checkout`"
        )
    if len(dataset) != config["num_windows"]:
        raise PipelineError(
            f"{dataset_dir} holds {len(dataset)} windows, not {config['num_windows']}: run `dvc checkout`"
        )
    return dataset, config


def create_dataloader(
    dataset_dir: str | Path = OUT_DIR,
    *,
    batch_size: int | None = None,
    shuffle: bool | None = None,
    seed: int | None = None,
    drop_last: bool | None = None,
    num_workers: int = 0,
) -> DataLoader:
    """A DataLoader over data/dataset/, with the settings the pipeline recorded unless overridden.

    The shuffle is drawn from a generator seeded with `seed`, so the batch order is the same every run.
    """
    dataset, config = load_dataset(dataset_dir)
    return DataLoader(
        dataset,
        batch_size=config["batch_size"] if batch_size is None else batch_size,
        shuffle=config["shuffle"] if shuffle is None else shuffle,
        drop_last=config["drop_last"] if drop_last is None else drop_last,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(config["seed"] if seed is None else seed),
    )


def link_or_copy(source: Path, dest: Path) -> None:
    """Share the token file's bytes instead of copying them where the filesystem allows."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)


def main() -> None:
    params = load_params("dataset", SCHEMA)
    geometry = read_json(WINDOWS_DIR / WINDOWS_FILE)
    tokens, meta = load_tokens(TOKENS_DIR)
    if geometry["num_tokens"] != len(tokens):
        raise PipelineError(f"{WINDOWS_DIR} was built from other tokens than {TOKENS_DIR}: run `dvc repro`")
    num_batches = geometry["num_windows"] // params["batch_size"]
    if num_batches == 0:
        raise PipelineError(
            f"dataset.batch_size {params['batch_size']} exceeds the {geometry['num_windows']} windows: "
            "lower dataset.batch_size, or window.stride"
        )
    config = {
        "format": FORMAT,
        "tokens": TOKENS_FILE,
        "dtype": meta["dtype"],
        "num_tokens": len(tokens),
        "encoding": meta["encoding"],
        "vocab_size": meta["vocab_size"],
        "max_length": geometry["max_length"],
        "stride": geometry["stride"],
        "num_windows": geometry["num_windows"],
        **params,
        "drop_last": True,
        "num_batches": num_batches,
    }
    with output_dir(OUT_DIR) as tmp:
        link_or_copy(TOKENS_DIR / TOKENS_FILE, tmp / TOKENS_FILE)
        write_json(tmp / DATASET_FILE, config)
        loader = create_dataloader(tmp)
        inputs, targets = next(iter(loader))
    write_metrics(
        "dataset",
        {
            "num_windows": config["num_windows"],
            "num_batches": len(loader),
            "batch_input_shape": list(inputs.shape),
            "batch_target_shape": list(targets.shape),
        },
    )


if __name__ == "__main__":
    run(main)
