"""Stage stats: how often each token occurs, for the plots people look at.

metrics/token_freq.csv  the most frequent tokens, decoded (a bar chart in `dvc plots show`)
metrics/zipf.csv        count against rank for every token that occurs (log-log: Zipf's law is a line)
"""

from pathlib import Path

import numpy as np

from llmpipe.cli import run
from llmpipe.counts import rank_frequency, token_counts, top_tokens
from llmpipe.formats import load_tokens, write_csv, write_metrics
from llmpipe.params import load_params, positive_int
from llmpipe.tokenizer import load_encoding

SCHEMA = {"top_tokens": positive_int}


def main(tokens_dir: Path) -> None:
    params = load_params("stats", SCHEMA)
    tokens, meta = load_tokens(tokens_dir)
    counts = token_counts(tokens.chunks(), meta["vocab_size"])
    top = top_tokens(counts, load_encoding(meta["encoding"]), params["top_tokens"])
    write_csv(Path("metrics/token_freq.csv"), top)
    write_csv(Path("metrics/zipf.csv"), rank_frequency(counts))
    metrics = {"num_tokens": len(tokens), "distinct_tokens": int(np.count_nonzero(counts))}
    write_metrics(
        Path("metrics/stats.json"), {**metrics, "top_token": top.token[0], "top_token_count": int(top["count"][0])}
    )


if __name__ == "__main__":
    run(main)
