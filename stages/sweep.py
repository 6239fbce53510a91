"""Stage sweep: how many windows each (max_length, stride) gives, counted and checked in closed form."""

from pathlib import Path

from llmpipe.cli import run
from llmpipe.formats import load_tokens, write_csv, write_metrics
from llmpipe.params import load_params, window_pairs
from llmpipe.windows import sweep

SCHEMA = {"configs": window_pairs}


def main(tokens_dir: Path) -> None:
    params = load_params("sweep", SCHEMA)
    tokens, _ = load_tokens(tokens_dir)
    table = sweep(len(tokens), params["configs"])
    write_csv(Path("metrics/sweep.csv"), table)
    counts = {f"max_length_{row.max_length}_stride_{row.stride}": int(row.num_windows) for row in table.itertuples()}
    write_metrics(Path("metrics/sweep.json"), {"num_windows": counts})


if __name__ == "__main__":
    run(main)
