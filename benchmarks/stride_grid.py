"""The notebook's stride experiment, run for real: stride 1, 2, 4 and max_length at equal optimizer steps.

    python -m benchmarks.stride_grid [--steps 1000] [--max-length 4] [--corpus PATH --sha256 HEX]

A copy of the project under .bench/stride-grid (a git repo) gets tiny Shakespeare through a fetch.sources line
and the grid's settings in params.yaml; then one `dvc exp run -S window.stride=N` per stride, timed, which is
what `dvc exp run --queue -S window.stride=1,2,4` followed by `dvc queue start -j 1` runs (docs/training.md).
Every run trains the same model for the same number of steps on the same batch size (equal compute), and is
measured on the same validation tokens (the train stage's validation windows do not overlap, whatever the stride).
Prints a table (windows, tokens seen, epochs, train and validation loss, baselines, probe score, wall time) and
writes the loss curves to .bench/stride-grid/curves.csv and docs/stride_grid.png. Not run in CI.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.book_training import ROOT, env, machine, project_copy

SHAKESPEARE = Path("/work/shared/corpus/tinyshakespeare.txt")
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def run(project: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=project, env=env(), capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def tsv(project: Path, name: str) -> list[tuple[int, float]]:
    lines = (project / "metrics/train/plots/metrics" / f"{name}.tsv").read_text().splitlines()[1:]
    return [(int(step), float(value)) for step, value in (line.split("\t") for line in lines)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=4)
    parser.add_argument("--corpus", type=Path, default=SHAKESPEARE)
    parser.add_argument("--sha256", default=SHAKESPEARE_SHA256)
    args = parser.parse_args()
    strides = sorted({1, 2, 4, args.max_length})
    params = {
        "fetch": {"sources": [{"url": str(args.corpus), "sha256": args.sha256}]},
        "window": {"max_length": args.max_length, "stride": args.max_length},
        "train": {"max_steps": args.steps, "epochs": None, "eval_every": 100, "eval_batches": 20, "threads": 1},
    }
    print(f"machine: {machine()}, torch threads 1", flush=True)
    project = project_copy("stride-grid", params)
    rows, curves = [], []
    for stride in strides:
        start = time.perf_counter()
        run(project, "exp", "run", "-n", f"stride-{stride}", "-S", f"window.stride={stride}")
        seconds = time.perf_counter() - start
        metrics = {
            name: json.loads((project / "metrics" / f"{name}.json").read_text())
            for name in ("tokenize", "window", "dataset", "probe")
        }
        train = json.loads((project / "metrics/train/metrics.json").read_text())
        rows.append(
            {
                "stride": stride,
                "windows": metrics["window"]["num_windows"],
                "train_windows": metrics["dataset"]["num_windows"],
                "tokens_seen": train["tokens_seen"],
                "epochs": train["epochs"],
                "train_loss": round(train["train_loss"], 4),
                "val_loss": round(train["val_loss"], 4),
                "unigram_val_loss": round(train["unigram_val_loss"], 4),
                "bigram_val_loss": round(train["bigram_val_loss"], 4),
                "probe_initial": metrics["probe"]["initial_score"],
                "probe_trained": metrics["probe"]["trained_score"],
                "seconds": round(seconds),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        for (step, train_loss), (_, val_loss) in zip(tsv(project, "train_loss"), tsv(project, "val_loss"), strict=True):
            curves.append({"stride": stride, "step": step, "train_loss": train_loss, "val_loss": val_loss})
    with open(project / "curves.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, list(curves[0]))
        writer.writeheader()
        writer.writerows(curves)
    num_tokens = metrics["tokenize"]["num_tokens"]
    print(f"\ncorpus: {num_tokens:,} tokens; max_length {args.max_length}, batch 8, {args.steps} steps each\n")
    print("| stride | windows (all / train) | tokens seen | epochs | train loss | val loss | unigram / bigram val "
          "| probe score before → after | wall time |\n|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for row in rows:
        print(
            f"| {row['stride']} | {row['windows']:,} / {row['train_windows']:,} | {row['tokens_seen']:,} | "
            f"{row['epochs']} | {row['train_loss']:.3f} | {row['val_loss']:.3f} | {row['unigram_val_loss']:.3f} / "
            f"{row['bigram_val_loss']:.3f} | {row['probe_initial']:.3f} → {row['probe_trained']:.3f} | "
            f"{row['seconds']} s |"
        )
    plot(curves, strides, args.steps)
    print(run(project, "exp", "show", "--no-pager", "--md", "--only-changed"))


def plot(curves: list[dict], strides: list[int], steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key in zip(axes, ("train_loss", "val_loss"), strict=True):
        for stride in strides:
            points = [(c["step"], c[key]) for c in curves if c["stride"] == stride]
            ax.plot(*zip(*points, strict=True), marker=".", label=f"stride {stride}")
        ax.set_title(f"{key.replace('_', ' ')} ({steps} steps, tiny Shakespeare)")
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cross-entropy (nats)")
    axes[1].legend()
    figure.tight_layout()
    (ROOT / "docs").mkdir(exist_ok=True)
    figure.savefig(ROOT / "docs" / "stride_grid.png", dpi=100)


if __name__ == "__main__":
    main()
