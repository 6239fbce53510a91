"""The book's chapter-5 training run, replicated by the pipeline and timed against the book's own loop.

    python -m benchmarks.book_training [--threads 1] [--book-epochs 1]

Ours: a copy of the project under .bench/book-training with the book's settings in params.yaml
(GPT_CONFIG_124M at context 256, stride 256, batch 2, a 90/10 split, AdamW lr 4e-4 / weight decay 0.1, 10
epochs, seed 123, evaluation every 5 steps on 5 batches, the-verdict), `dvc repro embed`, then the train stage's
own command, timed. The book's: llms_from_scratch's create_dataloader_v1, GPTModel and train_model_simple on the
same text, seed, model and cadence, in this process with the same thread count, for --book-epochs epochs (its
steps per second do not depend on how many). Prints the initial and final losses beside the book's, and both
loops' steps per second. Not run in CI: tens of minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(os.environ.get("BENCH_DIR", ROOT / ".bench"))
CORPUS = ROOT / "tests" / "data" / "corpus"
TIKTOKEN_CACHE = ROOT / "tests" / "data" / "tiktoken-cache"

# The book's figures (chapter 5): the untrained model's losses over the whole loaders (5.1.3), and the last
# evaluation of train_model_simple after 10 epochs ("Ep 10 (Step 000085): Train loss 0.391, Val loss 6.452").
BOOK_INITIAL = (10.98758347829183, 10.98110580444336)
BOOK_FINAL = (0.391, 6.452)

BOOK_PARAMS = {
    "window": {"max_length": 256, "stride": 256},
    "dataset": {"batch_size": 2, "shuffle": True, "seed": 123, "val_fraction": 0.1},
    "embed": {"dim": 768, "context_length": 256, "seed": 123},
    "train": {
        "n_layers": 12,
        "n_heads": 12,
        "drop_rate": 0.1,
        "qkv_bias": False,
        "lr": 0.0004,
        "weight_decay": 0.1,
        "max_steps": None,
        "epochs": 10,
        "eval_every": 5,
        "eval_batches": 5,
        "seed": 123,
        "device": "cpu",
    },
}


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()}, {os.cpu_count()} cores, {memory:.0f} GiB, Python {platform.python_version()}"


def project_copy(name: str, params: dict) -> Path:
    """A git repo under .bench/ holding the project's files (tracked and new), with `params` merged in."""
    project = WORK / name
    shutil.rmtree(project, ignore_errors=True)
    listing = ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"]
    for file in filter(None, subprocess.run(listing, cwd=ROOT, capture_output=True, text=True).stdout.split("\0")):
        if (ROOT / file).is_file():
            (project / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / file, project / file)
    values = yaml.safe_load((project / "params.yaml").read_text())
    for section, overrides in params.items():
        values[section].update(overrides)
    (project / "params.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):
        subprocess.run(command, cwd=project, env=env(), check=True, capture_output=True)
    return project


def env() -> dict:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "CORPUS_MIRROR": str(CORPUS),
        "TIKTOKEN_CACHE_DIR": str(TIKTOKEN_CACHE),
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@localhost",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@localhost",
    }


def history(project: Path, name: str) -> list[tuple[int, float]]:
    lines = (project / "metrics/train/plots/metrics" / f"{name}.tsv").read_text().splitlines()[1:]
    return [(int(step), float(value)) for step, value in (line.split("\t") for line in lines)]


def ours(threads: int) -> tuple[dict, float, Path]:
    """Run the pipeline's train stage with the book's settings; return its summary, seconds, and the project."""
    project = project_copy("book-training", {**BOOK_PARAMS, "train": {**BOOK_PARAMS["train"], "threads": threads}})
    subprocess.run([sys.executable, "-m", "dvc", "repro", "embed"], cwd=project, env=env(), check=True)
    start = time.perf_counter()
    command = [sys.executable, "stages/train.py", "data/dataset", "data/embeddings", "data/model"]
    subprocess.run(command, cwd=project, env=env(), check=True)
    seconds = time.perf_counter() - start
    return json.loads((project / "metrics/train/metrics.json").read_text()), seconds, project


def book(threads: int, epochs: int) -> tuple[int, float]:
    """The book's own loop (llms_from_scratch 5.2) on the same text and settings; return its steps and seconds."""
    import tiktoken
    import torch
    from llms_from_scratch.ch02 import create_dataloader_v1
    from llms_from_scratch.ch04 import GPTModel
    from llms_from_scratch.ch05 import train_model_simple

    torch.set_num_threads(threads)
    text = (CORPUS / "the-verdict.txt").read_text(encoding="utf-8")
    split = int(0.9 * len(text))
    config = {"vocab_size": 50257, "context_length": 256, "emb_dim": 768, "n_heads": 12, "n_layers": 12,
              "drop_rate": 0.1, "qkv_bias": False}  # fmt: skip
    torch.manual_seed(123)
    train_loader = create_dataloader_v1(text[:split], batch_size=2, max_length=256, stride=256, drop_last=True,
                                        shuffle=True, num_workers=0)  # fmt: skip
    val_loader = create_dataloader_v1(text[split:], batch_size=2, max_length=256, stride=256, drop_last=False,
                                      shuffle=False, num_workers=0)  # fmt: skip
    torch.manual_seed(123)
    model = GPTModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0004, weight_decay=0.1)
    start = time.perf_counter()
    train_model_simple(model, train_loader, val_loader, optimizer, "cpu", num_epochs=epochs, eval_freq=5,
                       eval_iter=5, start_context="Every effort moves you",
                       tokenizer=tiktoken.get_encoding("gpt2"))  # fmt: skip
    return epochs * len(train_loader), time.perf_counter() - start


def bench(threads: int = 1, book_epochs: int = 1) -> None:
    """Run both loops and print the table (what `python -m benchmarks.book_training` does)."""
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))
    print(f"machine: {machine()}, torch threads {threads}", flush=True)
    summary, seconds, project = ours(threads)
    train_losses, val_losses = history(project, "train_loss"), history(project, "val_loss")
    steps = summary["step"]
    book_steps, book_seconds = book(threads, book_epochs)
    rows = [
        ("initial train / val loss (step 0)", f"{train_losses[0][1]:.2f} / {val_losses[0][1]:.2f}",
         f"{BOOK_INITIAL[0]:.2f} / {BOOK_INITIAL[1]:.2f}"),
        (f"final train / val loss (step {steps}, 10 epochs)", f"{train_losses[-1][1]:.2f} / {val_losses[-1][1]:.2f}",
         f"{BOOK_FINAL[0]:.2f} / {BOOK_FINAL[1]:.2f}"),
        ("final val loss, whole validation split", f"{summary['val_loss']:.2f}", "-"),
        ("baselines on the same split: unigram / bigram",
         f"{summary['unigram_val_loss']:.2f} / {summary['bigram_val_loss']:.2f}", "-"),
        ("steps per second (ours: the train stage, all of it; book: train_model_simple)",
         f"{steps / seconds:.4f} ({steps} steps in {seconds:.0f} s)",
         f"{book_steps / book_seconds:.4f} ({book_steps} steps in {book_seconds:.0f} s)"),
    ]  # fmt: skip
    print("\n| book replication, GPT_CONFIG_124M on the-verdict | ours | book |\n|---|---|---|")
    for name, mine, theirs in rows:
        print(f"| {name} | {mine} | {theirs} |")
    print(f"| ratio of steps per second, ours / book | {(steps / seconds) / (book_steps / book_seconds):.2f}x | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both loops (default 1)")
    parser.add_argument("--book-epochs", type=int, default=1, help="epochs of the book's loop to time (default 1)")
    args = parser.parse_args()
    bench(args.threads, args.book_epochs)


if __name__ == "__main__":
    main()
