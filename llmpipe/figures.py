"""The book's chapter-2 figures as a workspace's metrics hold them: `python -m llmpipe.figures [METRICS_DIR]`.

`dvc metrics show` prints every metric of every stage in one wide table; this prints the few numbers the
book prints, one a line, beside where each comes from. A metric that is absent (a stage not run yet) shows
as "-".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from llmpipe.errors import PipelineError

# (label, metrics file, key); a key "a.b" reads a nested value.
FIGURES = [
    ("characters", "fetch.json", "chars"),
    ("tokens", "tokenize.json", "num_tokens"),
    ("first 20 token ids", "tokenize.json", "first_tokens"),
    ("windows (max_length, stride)", "window.json", "num_windows"),
    ("first input", "window.json", "first_input"),
    ("first target", "window.json", "first_target"),
    ("training windows", "dataset.json", "num_windows"),
    ("validation windows", "dataset.json", "val_num_windows"),
    ("batch (inputs)", "dataset.json", "batch_input_shape"),
    ("token embedding", "embed.json", "token_embedding_shape"),
    ("first two windows embedded", "embed.json", "sample_embedding_shape"),
    ("batch embedded with positions", "embed.json", "input_embedding_shape"),
    ("sweep windows", "sweep.json", "num_windows"),
    ("validation loss (GPT)", "train/metrics.json", "val_loss"),
    ("validation loss (bigram)", "train/metrics.json", "bigram_val_loss"),
    ("validation loss (unigram)", "train/metrics.json", "unigram_val_loss"),
    ("probe score (initial)", "probe.json", "initial_score"),
    ("probe score (trained)", "probe.json", "trained_score"),
]


def figure(metrics: dict, key: str) -> str:
    """One metric as text: lists as written ("[8, 4]"), dicts' values joined by " / ", floats to 4 places,
    absent as "-"."""
    value = metrics.get(key, "-")
    if isinstance(value, dict):
        return " / ".join(str(v) for v in value.values())
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def figures(metrics_dir: Path) -> list[tuple[str, str, str]]:
    """(label, value, source file) for each of FIGURES. Raises PipelineError when no metrics file exists."""
    files = {name: metrics_dir / name for name in {name for _, name, _ in FIGURES}}
    if not any(path.is_file() for path in files.values()):
        raise PipelineError(f"{metrics_dir.absolute()} holds no metrics: run `dvc repro` (or `dvc pull`) first")
    loaded = {name: json.loads(path.read_text()) if path.is_file() else {} for name, path in files.items()}
    return [(label, figure(loaded[name], key), name) for label, name, key in FIGURES]


def main() -> None:
    metrics_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "metrics")
    try:
        rows = figures(metrics_dir)
    except PipelineError as error:
        sys.exit(f"error: {error}")
    width = max(len(label) for label, _, _ in rows)
    for label, value, name in rows:
        print(f"{label:<{width}}  {value}  ({metrics_dir / name})")


if __name__ == "__main__":
    main()
