"""Token frequencies (for the plots people look at): top tokens and Zipf's rank-frequency table.

The counts come from np.bincount over chunks of the token array: memory is O(vocab), never O(tokens).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def token_counts(chunks: Iterable[np.ndarray], vocab_size: int) -> np.ndarray:
    """How often each id in range(vocab_size) occurs in the arrays of `chunks` (e.g. TokenArray.chunks())."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for ids in chunks:
        counts += np.bincount(ids, minlength=vocab_size)
    return counts


def ranked(counts: np.ndarray) -> np.ndarray:
    """The ids that occur, most frequent first; ties by id, so the order is the same every run."""
    order = np.argsort(-counts, kind="stable")
    return order[counts[order] > 0]


def label(encoding, token_id: int) -> str:
    """The token's text, with its spaces and line breaks drawn (␣, ↵) so that an axis label shows them."""
    text = encoding.decode_single_token_bytes(token_id).decode("utf-8", errors="replace")
    return text.replace(" ", "␣").replace("\n", "↵")


def top_tokens(counts: np.ndarray, encoding, top: int):
    """The `top` most frequent tokens: rank, token_id, token (decoded), count."""
    import pandas as pd

    ids = ranked(counts)[:top]
    return pd.DataFrame(
        {
            "rank": range(1, len(ids) + 1),
            "token_id": ids,
            "token": [label(encoding, int(i)) for i in ids],
            "count": counts[ids],
        }
    )


def rank_frequency(counts: np.ndarray):
    """Zipf's table: rank (1 = most frequent) and count, one row per token that occurs."""
    import pandas as pd

    ids = ranked(counts)
    return pd.DataFrame({"rank": range(1, len(ids) + 1), "count": counts[ids]})
