"""Input/target windows over the token ids (the book's section 2.6), as views: offsets, never copies.

Window i is tokens[i*stride : i*stride + max_length] and its target is the same shifted by one, for
i in range(0, len(tokens) - max_length, stride), exactly as the book's GPTDatasetV1 builds them.
"""

from __future__ import annotations

import math

import numpy as np

from llmpipe.errors import PipelineError

NUM_PREVIEW = 10


def sliding_windows(tokens: np.ndarray, max_length: int, stride: int) -> np.ndarray:
    """All windows as one read-only view of shape (num_windows, max_length + 1).

    Row i holds tokens[i*stride : i*stride + max_length + 1]: its first max_length ids are the input,
    its last max_length ids the target. Raises PipelineError when there are fewer than max_length + 1 tokens.
    """
    if len(tokens) < max_length + 1:
        raise PipelineError(
            f"max_length {max_length} needs at least {max_length + 1} tokens but the corpus has {len(tokens)}: "
            "lower max_length or use a longer corpus"
        )
    return np.lib.stride_tricks.sliding_window_view(tokens, max_length + 1)[::stride]


def first_windows(tokens, max_length: int, stride: int, count: int = NUM_PREVIEW) -> np.ndarray:
    """The first `count` windows (fewer if there are fewer) as sliding_windows gives them, reading only the
    ids they cover: `tokens` may be a TokenArray of any size. Raises PipelineError as sliding_windows does."""
    if len(tokens) < max_length + 1:
        sliding_windows(np.empty(len(tokens), np.uint8), max_length, stride)  # raises the one error
    head = np.asarray(tokens[: (count - 1) * stride + max_length + 1])
    return sliding_windows(head, max_length, stride)[:count]


def inputs_and_targets(window_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The input and target views of windows from sliding_windows."""
    return window_rows[:, :-1], window_rows[:, 1:]


def num_windows(num_tokens: int, max_length: int, stride: int) -> int:
    """How many windows the book's loop makes: ceil((num_tokens - max_length) / stride), 0 when too short."""
    return max(0, math.ceil((num_tokens - max_length) / stride))


def split_point(num_tokens: int, val_fraction: float) -> int:
    """How many tokens train: the book's split_idx = int(train_ratio * len(data))."""
    return int((1 - val_fraction) * num_tokens)


def plan_splits(num_tokens: int, max_length: int, stride: int, batch_size: int, val_fraction: float) -> dict:
    """The train/val split of the book's chapter 5: the first (1 - val_fraction) of the tokens train, the rest
    validate, each windowed on its own. Returns {split: {"file", "num_tokens", "num_windows"}}.

    Raises PipelineError when a split is too short for one window or the training split for one batch.
    """
    num_train = split_point(num_tokens, val_fraction)
    splits = {}
    for split, size in (("train", num_train), ("val", num_tokens - num_train)):
        if split == "val" and val_fraction == 0:
            count = 0
        elif size < max_length + 1:
            raise PipelineError(
                f"the {split} split has {size} tokens, fewer than max_length + 1 = {max_length + 1}: "
                "change dataset.val_fraction or lower window.max_length"
            )
        else:
            count = num_windows(size, max_length, stride)
        splits[split] = {"file": f"{split}.bin", "num_tokens": size, "num_windows": count}
    if splits["train"]["num_windows"] < batch_size:
        raise PipelineError(
            f"dataset.batch_size {batch_size} exceeds the {splits['train']['num_windows']} training windows: "
            "lower dataset.batch_size, window.stride or dataset.val_fraction"
        )
    return splits


def preview(window_rows: np.ndarray, stride: int, encoding, count: int = NUM_PREVIEW):
    """The first `count` windows as a pandas DataFrame a person reads: start, ids and decoded text of each side."""
    import pandas as pd

    inputs, targets = inputs_and_targets(window_rows[:count])
    return pd.DataFrame(
        {
            "window": range(len(inputs)),
            "start": [i * stride for i in range(len(inputs))],
            "input_ids": [" ".join(map(str, row.tolist())) for row in inputs],
            "target_ids": [" ".join(map(str, row.tolist())) for row in targets],
            "input_text": [encoding.decode(row.tolist()) for row in inputs],
            "target_text": [encoding.decode(row.tolist()) for row in targets],
        }
    )


def sweep(num_tokens: int, pairs: list[tuple[int, int]]):
    """How many windows each (max_length, stride) gives over `num_tokens` ids: counted as the book's loop
    counts them (its range of window starts) and in closed form.

    Returns a pandas DataFrame with max_length, stride, num_windows, formula. Raises PipelineError when the
    corpus is too short for a max_length, or if a count and its closed form ever disagree (a bug).
    """
    import pandas as pd

    rows = []
    for max_length, stride in pairs:
        if num_tokens < max_length + 1:
            sliding_windows(np.empty(num_tokens, np.uint8), max_length, stride)  # raises the one error
        counted = len(range(0, num_tokens - max_length, stride))
        rows.append({"max_length": max_length, "stride": stride, "num_windows": counted, "formula": 0})
        rows[-1]["formula"] = num_windows(num_tokens, max_length, stride)
    table = pd.DataFrame(rows)
    wrong = table[table.num_windows != table.formula]
    if len(wrong):
        row = wrong.iloc[0]
        raise PipelineError(
            f"max_length {row.max_length}, stride {row.stride}: counted {row.num_windows} windows "
            f"but the closed form gives {row.formula}: the window code is wrong, report it"
        )
    return table
