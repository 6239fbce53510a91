"""The training side: windows of a dataset folder as a PyTorch Dataset and DataLoader (the book's 2.6, 5.1).

    from llmpipe.data import create_dataloader
    loader = create_dataloader("data/dataset")          # the training split, as the pipeline recorded it
    for input_ids, target_ids in loader:                # int64 tensors of shape [batch_size, max_length]
        ...
    loader.dataset.vocab_size                           # for the model's embedding and output layers

Needs only numpy and torch. The dataset folder's layout is llmpipe.formats'.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from llmpipe.errors import PipelineError
from llmpipe.formats import ids_sha256, read_dataset_config, split_path
from llmpipe.sampling import DistributedWindows, ShuffledWindows
from llmpipe.windows import sliding_windows

MISSING_DATASET = "pass the dataset folder (data/dataset in the project), or build it there with `dvc repro dataset`"


class TokenWindowDataset(Dataset):
    """(input_ids, target_ids) pairs sliced on demand from a memory-mapped token file.

    Memory is O(tokens), not O(windows x max_length): nothing is materialised until an item is asked
    for. The memmap is opened lazily and never pickled, so each DataLoader worker opens its own.
    `config` is the dataset.json it came from (empty for a bare file); `vocab_size` is taken from it.
    """

    def __init__(
        self, tokens_path: str | Path, dtype: str, max_length: int, stride: int, config: dict[str, Any] | None = None
    ):
        self.tokens_path = Path(tokens_path)
        self.dtype = np.dtype(dtype)
        self.max_length = max_length
        self.stride = stride
        self.config = config or {}
        self.vocab_size = self.config.get("vocab_size")
        self._tokens = self._windows = None
        self.num_windows = len(self.windows)
        # Close the memmap again: each DataLoader worker (and the first item) opens its own.
        self._tokens = self._windows = None

    @property
    def tokens(self) -> np.ndarray:
        """The split's ids, memory-mapped read-only."""
        if self._tokens is None:
            # np.memmap cannot map an empty file; an empty split is an empty array.
            empty = self.tokens_path.stat().st_size == 0
            self._tokens = np.empty(0, self.dtype) if empty else np.memmap(self.tokens_path, self.dtype, mode="r")
        return self._tokens

    @property
    def windows(self) -> np.ndarray:
        """All windows as one view of shape (num_windows, max_length + 1)."""
        if self._windows is None:
            self._windows = sliding_windows(self.tokens, self.max_length, self.stride)
        return self._windows

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None, "_windows": None}

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = torch.from_numpy(self.windows[index].astype(np.int64))
        return row[:-1], row[1:]

    def __getitems__(self, indices: list[int]) -> WindowBatch:
        """A whole batch gathered with one vectorised copy instead of one slice per window."""
        rows = torch.from_numpy(self.windows[np.asarray(indices)].astype(np.int64))
        return WindowBatch(rows[:, :-1], rows[:, 1:])


class WindowBatch(Sequence):
    """A gathered batch that still reads as a sequence of (input, target) pairs.

    A plain DataLoader's default_collate stacks the pairs as usual; collate_windows, which
    create_dataloader uses, returns the two batch tensors as they are, with no per-window copies.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor):
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.targets[index]


def collate_windows(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The (inputs, targets) tensors of a WindowBatch as they are; anything else through default_collate."""
    if isinstance(batch, WindowBatch):
        return batch.inputs, batch.targets
    return default_collate(batch)


def load_dataset(dataset_dir: str | Path, split: str = "train", *, verify: bool = False) -> TokenWindowDataset:
    """One split ("train" or "val") of the dataset folder `dataset_dir` that the pipeline's dataset stage wrote.

    Opening is cheap whatever the size: dataset.json's fields and the split file's size are checked, no id is
    read. With verify=True the ids' sha256 is checked too (one read of the whole file; the train stage does it).
    The settings of dataset.json are on the result's `config`.
    Raises PipelineError naming the folder and the fix when anything does not match.
    """
    dataset_dir = Path(dataset_dir)
    config = read_dataset_config(dataset_dir, missing=MISSING_DATASET)
    path, recorded = split_path(dataset_dir, config, split)
    dataset = TokenWindowDataset(path, config["dtype"], config["max_length"], config["stride"], config)
    if verify and ids_sha256(dataset.tokens) != recorded["sha256"]:
        raise PipelineError(f"{path} was edited or corrupted (its sha256 differs): run `dvc checkout`")
    if len(dataset) != recorded["num_windows"]:
        raise PipelineError(f"{path} gives {len(dataset)} windows, not {recorded['num_windows']}: run `dvc checkout`")
    return dataset


def create_dataloader(
    dataset_dir: str | Path,
    split: str = "train",
    *,
    batch_size: int | None = None,
    shuffle: bool | None = None,
    seed: int | None = None,
    drop_last: bool | None = None,
    num_workers: int = 0,
    distributed: bool = False,
    verify: bool = False,
) -> DataLoader:
    """A DataLoader over one split of a dataset folder, with its recorded settings unless overridden.

    As in the book, the training split is shuffled and drops its last partial batch; the validation split
    does neither. The shuffle is a seeded permutation computed on demand (llmpipe.sampling), so the order is
    the same every run, a new one each epoch, and memory does not grow with the number of windows. With
    distributed=True (inside torch.distributed) each rank draws a disjoint share of the same order (the
    shares of DistributedSampler): call loader.sampler.set_epoch(epoch) at every epoch.
    Batches are (input_ids, target_ids), int64 tensors of shape [batch_size, max_length].
    Raises PipelineError as load_dataset(dataset_dir, split, verify=verify) does.
    """
    dataset = load_dataset(dataset_dir, split, verify=verify)
    config = dataset.config
    training = split == "train"
    shuffle = (config["shuffle"] and training) if shuffle is None else shuffle
    seed = config["seed"] if seed is None else seed
    if distributed:
        sampler = DistributedWindows(len(dataset), seed=seed, shuffle=shuffle)
    else:
        sampler = ShuffledWindows(len(dataset), seed, shuffle=shuffle)
    return DataLoader(
        dataset,
        batch_size=config["batch_size"] if batch_size is None else batch_size,
        sampler=sampler,
        drop_last=training if drop_last is None else drop_last,
        num_workers=num_workers,
        collate_fn=collate_windows,
    )
