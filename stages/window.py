"""Stage window: slide input/target windows over the token ids (the book's section 2.6).

Window i is tokens[i*stride : i*stride + max_length] and its target is the same shifted by one, for
i in range(0, len(tokens) - max_length, stride) exactly as in the book's GPTDatasetV1. The windows are
numpy views over the token array, never copies: this stage records their geometry and a preview.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.common import PipelineError, load_params, output_dir, positive_int, run, write_json, write_metrics
from stages.tokenize import OUT_DIR as TOKENS_DIR
from stages.tokenize import load_encoding, load_tokens

OUT_DIR = Path("data/windows")
WINDOWS_FILE = "windows.json"
PREVIEW_FILE = "preview.csv"
NUM_PREVIEW = 10

SCHEMA = {"max_length": positive_int, "stride": positive_int}


def windows(tokens: np.ndarray, max_length: int, stride: int) -> np.ndarray:
    """All windows as one read-only view of shape (num_windows, max_length + 1).

    Row i holds tokens[i*stride : i*stride + max_length + 1]: its first max_length ids are the input,
    its last max_length ids the target.
    """
    if len(tokens) < max_length + 1:
        raise PipelineError(
            f"max_length {max_length} needs at least {max_length + 1} tokens but the corpus has {len(tokens)}: "
            "lower max_length or use a longer corpus"
        )
    return np.lib.stride_tricks.sliding_window_view(tokens, max_length + 1)[::stride]


def inputs_and_targets(window_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return window_rows[:, :-1], window_rows[:, 1:]


def preview(window_rows: np.ndarray, stride: int, encoding, count: int = NUM_PREVIEW):
    """The first windows as a table a person can read: ids and decoded text of input and target."""
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


def main() -> None:
    params = load_params("window", SCHEMA)
    tokens, meta = load_tokens(TOKENS_DIR)
    window_rows = windows(tokens, params["max_length"], params["stride"])
    inputs, targets = inputs_and_targets(window_rows)
    table = preview(window_rows, params["stride"], load_encoding(meta["encoding"]))
    geometry = {**params, "num_windows": len(window_rows), "num_tokens": len(tokens)}
    with output_dir(OUT_DIR) as tmp:
        write_json(tmp / WINDOWS_FILE, geometry)
        table.to_csv(tmp / PREVIEW_FILE, index=False, lineterminator="\n")
    write_metrics(
        "window",
        {**geometry, "first_input": inputs[0].tolist(), "first_target": targets[0].tolist()},
    )


if __name__ == "__main__":
    run(main)
