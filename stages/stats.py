"""Stage stats: how often each token occurs in the corpus, for the plots people look at.

metrics/token_freq.csv  the most frequent tokens, decoded (a bar chart in `dvc plots show`)
metrics/zipf.csv        count against rank for every token that occurs (log-log: Zipf's law is a line)

The counts come from np.bincount over chunks of the token array: memory is O(vocab), never O(tokens).
"""

from __future__ import annotations

import numpy as np

from stages.common import METRICS_DIR, load_params, positive_int, run, write_file_atomic, write_metrics
from stages.tokenize import OUT_DIR as TOKENS_DIR
from stages.tokenize import load_encoding, load_tokens

TOKEN_FREQ_CSV = METRICS_DIR / "token_freq.csv"
ZIPF_CSV = METRICS_DIR / "zipf.csv"
CHUNK = 1 << 24  # tokens counted at a time: bincount casts its input to int64, so a chunk costs 8 bytes a token

SCHEMA = {"top_tokens": positive_int}


def token_counts(tokens: np.ndarray, vocab_size: int, chunk: int = CHUNK) -> np.ndarray:
    """How often each id in range(vocab_size) occurs in `tokens`."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, len(tokens), chunk):
        counts += np.bincount(tokens[start : start + chunk], minlength=vocab_size)
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


def to_csv(table) -> bytes:
    return table.to_csv(index=False, lineterminator="\n").encode("utf-8")


def main() -> None:
    params = load_params("stats", SCHEMA)
    tokens, meta = load_tokens(TOKENS_DIR)
    counts = token_counts(tokens, meta["vocab_size"])
    top = top_tokens(counts, load_encoding(meta["encoding"]), params["top_tokens"])
    write_file_atomic(TOKEN_FREQ_CSV, to_csv(top))
    write_file_atomic(ZIPF_CSV, to_csv(rank_frequency(counts)))
    write_metrics(
        "stats",
        {
            "num_tokens": len(tokens),
            "distinct_tokens": int(np.count_nonzero(counts)),
            "top_token": top.token[0],
            "top_token_count": int(top["count"][0]),
        },
    )


if __name__ == "__main__":
    run(main)
