"""Stage dataset: a PyTorch Dataset and DataLoader over the windows (the book's sections 2.6 and 5.1).

The tokens are split by position as the book's chapter 5 splits its text: the first
(1 - val_fraction) of them train, the rest validate, and each side is windowed on its own.
data/dataset/ is self-contained, so training code needs nothing else:
  train.bin     the training token ids, raw uint16 (uint32 for vocabularies over 65,536): nanoGPT's layout
  val.bin       the validation token ids, the same way (empty when dataset.val_fraction is 0)
  dataset.json  dtype, window geometry (max_length, stride), loader settings (batch_size, shuffle, seed,
                drop_last), the encoding and vocab_size, and per split its file, num_tokens, num_windows

Training code:  from stages.dataset import create_dataloader; loader = create_dataloader("data/dataset")
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from torch.utils.data.distributed import DistributedSampler

from stages.common import (
    PipelineError,
    boolean,
    id_bytes,
    ids_sha256,
    load_params,
    non_negative_int,
    output_dir,
    positive_int,
    read_json,
    require_fields,
    run,
    write_json,
    write_metrics,
)
from stages.tokenize import OUT_DIR as TOKENS_DIR
from stages.tokenize import load_tokens
from stages.window import OUT_DIR as WINDOWS_DIR
from stages.window import WINDOWS_FILE, windows

OUT_DIR = Path("data/dataset")
DATASET_FILE = "dataset.json"
FORMAT = "ch2-token-windows/2"
SPLITS = ("train", "val")
# What load_dataset reads from dataset.json; an edited file fails here in one line.
CONFIG_FIELDS = {
    "splits": dict,
    "dtype": str,
    "max_length": int,
    "stride": int,
    "batch_size": int,
    "shuffle": bool,
    "seed": int,
}
SPLIT_FIELDS = {"file": str, "num_tokens": int, "num_windows": int, "sha256": str}


def fraction(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise PipelineError(
            f"{key} must be a number from 0 up to (not including) 1, got {value!r}: fix it in params.yaml"
        )
    return float(value)


SCHEMA = {"batch_size": positive_int, "shuffle": boolean, "seed": non_negative_int, "val_fraction": fraction}


class TokenWindowDataset(Dataset):
    """(input_ids, target_ids) pairs sliced on demand from a memory-mapped token file.

    Memory is O(tokens), not O(windows x max_length): nothing is materialised until an item is asked
    for. The memmap is opened lazily and never pickled, so each DataLoader worker opens its own.
    """

    def __init__(self, tokens_path: str | Path, dtype: str, max_length: int, stride: int):
        self.tokens_path = Path(tokens_path)
        self.dtype = np.dtype(dtype)
        self.max_length = max_length
        self.stride = stride
        self._tokens = self._windows = None
        self.num_windows = len(self.windows)
        # Close the memmap again: each DataLoader worker (and the first item) opens its own.
        self._tokens = self._windows = None

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            # np.memmap cannot map an empty file; an empty split is an empty array.
            empty = self.tokens_path.stat().st_size == 0
            self._tokens = np.empty(0, self.dtype) if empty else np.memmap(self.tokens_path, self.dtype, mode="r")
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
    if isinstance(batch, WindowBatch):
        return batch.inputs, batch.targets
    return default_collate(batch)


def load_dataset(dataset_dir: str | Path = OUT_DIR, split: str = "train") -> tuple[TokenWindowDataset, dict]:
    """One split of the dataset in `dataset_dir`, and the settings from its dataset.json."""
    dataset_dir = Path(dataset_dir)
    config = read_json(dataset_dir / DATASET_FILE)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise PipelineError(f"{dataset_dir / DATASET_FILE} is not in format {FORMAT}: rebuild it with `dvc repro`")
    if split not in SPLITS:
        raise PipelineError(f"split {split!r} is unknown: use one of {', '.join(SPLITS)}")
    require_fields(config, CONFIG_FIELDS, dataset_dir / DATASET_FILE)
    recorded = require_fields(config["splits"].get(split), SPLIT_FIELDS, f"{dataset_dir / DATASET_FILE} ({split})")
    if recorded["num_windows"] == 0:
        raise PipelineError(f"{dataset_dir} has no {split} windows: set dataset.val_fraction above 0 and rerun")
    path = dataset_dir / recorded["file"]
    expected_bytes = recorded["num_tokens"] * np.dtype(config["dtype"]).itemsize
    if not path.is_file() or path.stat().st_size != expected_bytes:
        raise PipelineError(
            f"{path} should hold {recorded['num_tokens']} {config['dtype']} ids ({expected_bytes} bytes) "
            f"as {DATASET_FILE} records: run `dvc checkout` to restore it"
        )
    dataset = TokenWindowDataset(path, config["dtype"], config["max_length"], config["stride"])
    if ids_sha256(dataset.tokens) != recorded["sha256"]:
        raise PipelineError(f"{path} was edited or corrupted (its sha256 differs): run `dvc checkout`")
    if len(dataset) != recorded["num_windows"]:
        raise PipelineError(f"{path} gives {len(dataset)} windows, not {recorded['num_windows']}: run `dvc checkout`")
    return dataset, config


def create_dataloader(
    dataset_dir: str | Path = OUT_DIR,
    split: str = "train",
    *,
    batch_size: int | None = None,
    shuffle: bool | None = None,
    seed: int | None = None,
    drop_last: bool | None = None,
    num_workers: int = 0,
    distributed: bool = False,
) -> DataLoader:
    """A DataLoader over one split of data/dataset/, with the recorded settings unless overridden.

    As in the book, the training split is shuffled (from a generator seeded with `seed`, so the order
    is the same every run) and drops its last partial batch; the validation split does neither.
    With distributed=True (inside torch.distributed) each rank draws a disjoint share through a
    DistributedSampler seeded the same way: call loader.sampler.set_epoch(epoch) at every epoch.
    """
    dataset, config = load_dataset(dataset_dir, split)
    training = split == "train"
    shuffle = (config["shuffle"] and training) if shuffle is None else shuffle
    seed = config["seed"] if seed is None else seed
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed)
    elif shuffle:
        sampler = ShuffledWindows(len(dataset), torch.Generator().manual_seed(seed))
    else:
        sampler = None  # in order
    return DataLoader(
        dataset,
        batch_size=config["batch_size"] if batch_size is None else batch_size,
        sampler=sampler,
        drop_last=training if drop_last is None else drop_last,
        num_workers=num_workers,
        collate_fn=collate_windows,
    )


class ShuffledWindows(Sampler[int]):
    """Every window index once an epoch, in a new seeded order each epoch.

    torch's RandomSampler turns each epoch's permutation into a Python list, 36 bytes a window: 11 GB
    for the 300 million windows of a 1 GB corpus at stride 1. This keeps it as an int32 tensor (4 bytes
    a window) and hands it out a slice at a time.
    """

    SLICE = 1 << 16

    def __init__(self, num_windows: int, generator: torch.Generator):
        self.num_windows = num_windows
        self.generator = generator

    def __len__(self) -> int:
        return self.num_windows

    def __iter__(self) -> Iterator[int]:
        dtype = torch.int32 if self.num_windows < 1 << 31 else torch.int64
        order = torch.randperm(self.num_windows, generator=self.generator, dtype=dtype)
        for start in range(0, self.num_windows, self.SLICE):
            yield from order[start : start + self.SLICE].tolist()


def split_tokens(num_tokens: int, val_fraction: float) -> int:
    """How many tokens train: the book's split_idx = int(train_ratio * len(data))."""
    return int((1 - val_fraction) * num_tokens)


def write_tokens(tokens: np.ndarray, path: Path) -> str:
    """Write the raw ids with flat memory; return their sha256, taken in the same pass."""
    digest = hashlib.sha256()
    with open(path, "wb") as file:
        for data in id_bytes(tokens):
            file.write(data)
            digest.update(data)
    return digest.hexdigest()


def main() -> None:
    params = load_params("dataset", SCHEMA)
    geometry = read_json(WINDOWS_DIR / WINDOWS_FILE, {"num_tokens": int, "max_length": int, "stride": int})
    tokens, meta = load_tokens(TOKENS_DIR)
    if geometry["num_tokens"] != len(tokens):
        raise PipelineError(f"{WINDOWS_DIR} was built from other tokens than {TOKENS_DIR}: run `dvc repro`")
    max_length, stride, batch_size = geometry["max_length"], geometry["stride"], params["batch_size"]
    num_train = split_tokens(len(tokens), params["val_fraction"])
    parts = {"train": tokens[:num_train], "val": tokens[num_train:]}
    splits = {}
    for split, part in parts.items():
        if split == "val" and params["val_fraction"] == 0:
            num_windows = 0
        elif len(part) < max_length + 1:
            raise PipelineError(
                f"the {split} split has {len(part)} tokens, fewer than max_length + 1 = {max_length + 1}: "
                "change dataset.val_fraction or lower window.max_length"
            )
        else:
            num_windows = len(windows(part, max_length, stride))
        splits[split] = {"file": f"{split}.bin", "num_tokens": len(part), "num_windows": num_windows}
    if splits["train"]["num_windows"] < batch_size:
        raise PipelineError(
            f"dataset.batch_size {batch_size} exceeds the {splits['train']['num_windows']} training windows: "
            "lower dataset.batch_size, window.stride or dataset.val_fraction"
        )
    config = {
        "format": FORMAT,
        "dtype": meta["dtype"],
        "encoding": meta["encoding"],
        "vocab_size": meta["vocab_size"],
        "max_length": max_length,
        "stride": stride,
        **params,
        "splits": splits,
    }
    with output_dir(OUT_DIR) as tmp:
        for split, part in parts.items():
            splits[split]["sha256"] = write_tokens(part, tmp / splits[split]["file"])
        write_json(tmp / DATASET_FILE, config)
        loader = create_dataloader(tmp)
        inputs, targets = next(iter(loader))
    write_metrics(
        "dataset",
        {
            "num_windows": splits["train"]["num_windows"],
            "num_batches": len(loader),
            "batch_input_shape": list(inputs.shape),
            "batch_target_shape": list(targets.shape),
            "val_num_windows": splits["val"]["num_windows"],
        },
    )


if __name__ == "__main__":
    run(main)
