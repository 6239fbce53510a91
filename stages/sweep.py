"""Stage sweep: how many windows each (max_length, stride) gives, counted and checked in closed form.

The count comes from the window stage's own code; the closed form is ceil((N - max_length) / stride).
The stage fails if the two ever disagree.
"""

from __future__ import annotations

import math
from typing import Any

from stages.common import METRICS_DIR, PipelineError, load_params, positive_int, run, write_file_atomic, write_metrics
from stages.tokenize import OUT_DIR as TOKENS_DIR
from stages.tokenize import load_tokens
from stages.window import windows

SWEEP_CSV = METRICS_DIR / "sweep.csv"


def configs(key: str, value: Any) -> list[tuple[int, int]]:
    if not isinstance(value, list) or not value:
        raise PipelineError(f"{key} must be a non-empty list of [max_length, stride] pairs, got {value!r}")
    pairs = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            raise PipelineError(f"{key} entry {item!r} is not a [max_length, stride] pair: write it as [4, 1]")
        pairs.append((positive_int(f"{key} max_length", item[0]), positive_int(f"{key} stride", item[1])))
    return pairs


SCHEMA = {"configs": configs}


def closed_form(num_tokens: int, max_length: int, stride: int) -> int:
    return math.ceil((num_tokens - max_length) / stride)


def sweep(tokens, pairs: list[tuple[int, int]]):
    """One row per pair: max_length, stride, num_windows (counted), formula (closed form)."""
    import pandas as pd

    table = pd.DataFrame(
        [
            {
                "max_length": max_length,
                "stride": stride,
                "num_windows": len(windows(tokens, max_length, stride)),
                "formula": closed_form(len(tokens), max_length, stride),
            }
            for max_length, stride in pairs
        ]
    )
    wrong = table[table.num_windows != table.formula]
    if len(wrong):
        row = wrong.iloc[0]
        raise PipelineError(
            f"max_length {row.max_length}, stride {row.stride}: counted {row.num_windows} windows "
            f"but the closed form gives {row.formula}: the window code is wrong, report it"
        )
    return table


def main() -> None:
    params = load_params("sweep", SCHEMA)
    tokens, _ = load_tokens(TOKENS_DIR)
    table = sweep(tokens, params["configs"])
    write_file_atomic(SWEEP_CSV, table.to_csv(index=False, lineterminator="\n").encode("utf-8"))
    write_metrics(
        "sweep",
        {
            "num_windows": {
                f"max_length_{row.max_length}_stride_{row.stride}": int(row.num_windows) for row in table.itertuples()
            }
        },
    )


if __name__ == "__main__":
    run(main)
