"""Benchmarks: the pipeline and its baseline measured side by side in one run, with their ratios.

    python -m benchmarks                 # all of them (about ten minutes on 2 cores)
    python -m benchmarks loader repro    # some of them

Corpora are tiny Shakespeare from ../shared concatenated to the size asked, split into 100 MB files,
made once under .bench/ (git-ignored). Peak RSS is the kernel's ru_maxrss of the measured process.
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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml

from stages.dataset import ShuffledWindows, TokenWindowDataset, collate_windows
from stages.tokenize import CHUNK_CHARS, TokenFile, load_encoding, read_chunks, tokenize_documents

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
SHAKESPEARE = SHARED / "corpus" / "tinyshakespeare.txt"
VERDICT = SHARED / "corpus" / "the-verdict.txt"
WORK = ROOT / ".bench"
MB = 10**6
FILE_MB = 100
GNU_TIME = "/usr/bin/time"  # Debian's package `time`


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()}, {os.cpu_count()} cores, {memory:.0f} GiB, Python {platform.python_version()}"


def corpus(size_mb: int) -> Path:
    """A folder of tiny Shakespeare repeated to `size_mb` MB, in files of at most FILE_MB."""
    folder = WORK / f"corpus-{size_mb}mb"
    if folder.is_dir():
        return folder
    text = SHAKESPEARE.read_bytes()
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    remaining, index = size_mb * MB, 0
    while remaining > 0:
        size = min(remaining, FILE_MB * MB)
        repeated = text * (size // len(text) + 1)
        cut = repeated.rfind(b"\n", 0, size) + 1 or size  # whole lines where there is room for one
        (tmp / f"part-{index:03d}.txt").write_bytes(repeated[:cut])
        remaining -= cut
        index += 1
    tmp.rename(folder)
    return folder


def measured(command: list[str], cwd: Path, env: dict | None = None) -> tuple[float, int, str]:
    """Run a command; return its wall time, its peak RSS in bytes and its stdout.

    GNU time reports the peak: a child forked from this (large) process would count our pages too.
    """
    start = time.perf_counter()
    result = subprocess.run(
        [GNU_TIME, "-f", "%M", *command],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(command)}\n{result.stderr}")
    return seconds, int(result.stderr.split()[-1]) * 1024, result.stdout


def stage_project(name: str, corpus_dir: Path, params: dict) -> Path:
    """A folder where stages run as dvc.yaml runs them: params.yaml and the corpus in data/raw."""
    project = WORK / name
    shutil.rmtree(project, ignore_errors=True)
    (project / "data" / "raw").mkdir(parents=True)
    for path in sorted(corpus_dir.iterdir()):
        os.link(path, project / "data" / "raw" / path.name)
    defaults = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in params.items():
        defaults[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(defaults))
    return project


def run_stage(project: Path, stage: str) -> tuple[float, int]:
    seconds, rss, _ = measured([sys.executable, "-m", f"stages.{stage}"], project, {"PYTHONPATH": str(ROOT)})
    return seconds, rss


def row(name: str, ours: str, baseline: str, ratio: str, goal: str) -> None:
    print(f"| {name} | {ours} | {baseline} | {ratio} | {goal} |", flush=True)


def mib(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:,.0f} MiB"


def bench_tokenize(size_mb: int = 200) -> None:
    """1. Tokenize throughput against tiktoken's encode_ordinary_batch on text already in memory."""
    files = sorted(corpus(size_mb).iterdir())
    encoding = load_encoding("gpt2")
    WORK.mkdir(exist_ok=True)
    start = time.perf_counter()
    token_file = TokenFile(WORK / "throughput.npy", np.uint16)
    tokenize_documents((read_chunks(path) for path in files), encoding, token_file.append)
    token_file.close()
    ours = size_mb / (time.perf_counter() - start)
    texts = [path.read_text(encoding="utf-8") for path in files]
    pieces = [text[i : i + CHUNK_CHARS] for text in texts for i in range(0, len(text), CHUNK_CHARS)]
    start = time.perf_counter()
    encoding.encode_ordinary_batch(pieces, num_threads=os.cpu_count())
    ceiling = size_mb / (time.perf_counter() - start)
    del texts, pieces
    row(
        f"tokenize throughput, {size_mb} MB (files → tokens.npy vs in-memory batch encode)",
        f"{ours:.1f} MB/s",
        f"{ceiling:.1f} MB/s",
        f"{ours / ceiling:.2f}×",
        "≥ 0.9×",
    )


def bench_stage_memory(sizes: tuple[int, ...] = (100, 1000)) -> None:
    """2 and 3. Peak RSS of tokenize at each size; window + dataset at the largest, against GPTDatasetV1."""
    for size_mb in sizes:
        project = stage_project(f"stages-{size_mb}mb", corpus(size_mb), {"window": {"max_length": 256, "stride": 1}})
        seconds, rss = run_stage(project, "tokenize")
        row(f"tokenize stage peak RSS, {size_mb} MB", mib(rss), "–", f"{size_mb / seconds:.1f} MB/s", "≤ 512 MiB")
    num_tokens = json.loads((project / "data/tokens/meta.json").read_text())["num_tokens"]
    window_seconds, window_rss = run_stage(project, "window")
    dataset_seconds, dataset_rss = run_stage(project, "dataset")
    ours_rss = max(window_rss, dataset_rss)
    book_mb = 4
    book_text = WORK / f"book-{book_mb}mb.txt"
    book_text.write_bytes(b"".join(p.read_bytes() for p in sorted(corpus(book_mb).iterdir())))
    code = (
        "import sys, tiktoken; from benchmarks.book import GPTDatasetV1; "
        "text = open(sys.argv[1], encoding='utf-8').read(); "
        "d = GPTDatasetV1(text, tiktoken.get_encoding('gpt2'), 256, 1); print(len(d) + 256)"
    )
    book_seconds, book_rss, out = measured([sys.executable, "-c", code, str(book_text)], ROOT)
    book_tokens = int(out.split()[-1])
    ours_per_token, book_per_token = ours_rss / num_tokens, book_rss / book_tokens
    row(
        f"window + dataset, max_length 256 stride 1: ours at {sizes[-1]} MB ({num_tokens:,} tokens), "
        f"GPTDatasetV1 at {book_mb} MB ({book_tokens:,} tokens)",
        f"{mib(ours_rss)} peak, {ours_per_token:.2f} B/token, {window_seconds + dataset_seconds:.1f} s",
        f"{mib(book_rss)} peak, {book_per_token:,.0f} B/token, {book_seconds:.1f} s",
        f"{book_per_token / ours_per_token:,.0f}× less memory per token",
        "≥ 100×",
    )


def samples_per_second(loader, batches: int) -> float:
    """Batches of 32 drawn from `loader` for `batches` batches (epochs repeat as needed)."""
    drawn = 0
    start = time.perf_counter()
    while drawn < batches:
        for inputs, _ in loader:
            assert inputs.shape == (32, 256)
            drawn += 1
            if drawn == batches:
                break
    return batches * 32 / (time.perf_counter() - start)


def shuffled(dataset, **options):
    return torch.utils.data.DataLoader(
        dataset, batch_size=32, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0), **options
    )


class ItemByItem(TokenWindowDataset):
    """The same dataset with the batched gather turned off, to measure what it gains."""

    __getitems__ = None


def bench_loader(batches: int = 1000) -> None:
    """4. DataLoader samples per second, batch 32, max_length 256, against GPTDatasetV1's DataLoader."""
    from benchmarks.book import GPTDatasetV1

    encoding = load_encoding("gpt2")
    text = SHAKESPEARE.read_text(encoding="utf-8")
    path = WORK / "loader-train.bin"
    WORK.mkdir(exist_ok=True)
    np.array(encoding.encode_ordinary(text), dtype=np.uint16).tofile(path)
    for stride in (128, 1):
        dataset = TokenWindowDataset(path, "uint16", 256, stride)
        # What create_dataloader builds: the seeded ShuffledWindows sampler and the batch as gathered.
        sampler = ShuffledWindows(len(dataset), torch.Generator().manual_seed(0))
        ours_loader = torch.utils.data.DataLoader(
            dataset, batch_size=32, sampler=sampler, drop_last=True, collate_fn=collate_windows
        )
        ours = samples_per_second(ours_loader, batches)
        itemwise = samples_per_second(shuffled(ItemByItem(path, "uint16", 256, stride)), batches)
        book = samples_per_second(shuffled(GPTDatasetV1(text, encoding, 256, stride)), batches)
        row(
            f"DataLoader samples/s, batch 32, max_length 256, stride {stride} (item by item: {itemwise:,.0f}/s)",
            f"{ours:,.0f}/s",
            f"{book:,.0f}/s",
            f"{ours / book:.2f}×",
            "≥ 2×",
        )


def repro_project(name: str, fetch_sources: list | None = None) -> tuple[Path, dict]:
    """A fresh git repo holding a copy of the project (and, given, extra fetch sources), ready for dvc repro."""
    project = WORK / name
    shutil.rmtree(project, ignore_errors=True)
    listing = ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"]
    files = subprocess.run(listing, cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    for file in filter(None, files):
        (project / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / file, project / file)
    if fetch_sources:
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["fetch"]["sources"] = fetch_sources
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "CORPUS_MIRROR": str(VERDICT.parent),
        "TIKTOKEN_CACHE_DIR": os.environ["TIKTOKEN_CACHE_DIR"],
    }
    for command in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "bench"],
    ):
        subprocess.run(command, cwd=project, env={**os.environ, **env}, check=True, capture_output=True)
    return project, env


def bench_repro() -> None:
    """5. dvc repro on the default corpus, cold and no-op, against the book's notebook as one script."""
    project, env = repro_project("repro")
    dvc = [sys.executable, "-m", "dvc", "repro"]
    cold, _, _ = measured(dvc, project, env)
    noop, _, _ = measured(dvc, project, env)
    book, _, _ = measured([sys.executable, "-m", "benchmarks.book", str(VERDICT)], ROOT, env)
    row(
        "dvc repro, default corpus, fresh clone (cold)",
        f"{cold:.1f} s",
        f"{book:.1f} s (notebook as a script)",
        f"{cold / book:.1f}×",
        "≤ 2×",
    )
    row("dvc repro with nothing to do (no-op)", f"{noop:.2f} s", "–", "–", "≤ 1 s")


def bench_scale(size_mb: int = 1000) -> None:
    """The whole pipeline on a multi-file corpus: the book's story plus `size_mb` MB in 100 MB files."""
    project, env = repro_project("scale", [{"path": str(corpus(size_mb))}])
    seconds, rss, _ = measured([sys.executable, "-m", "dvc", "repro"], project, env)
    figures = {
        stage: json.loads((project / "metrics" / f"{stage}.json").read_text())
        for stage in ("fetch", "tokenize", "window", "dataset", "embed")
    }
    row(
        f"dvc repro, {size_mb} MB in {figures['fetch']['num_documents']} files, cold",
        f"{seconds:.0f} s, {mib(rss)} peak",
        "–",
        f"{figures['tokenize']['num_tokens']:,} tokens, {figures['window']['num_windows']:,} windows, "
        f"batch {figures['dataset']['batch_input_shape']}, embeddings {figures['embed']['input_embedding_shape']}",
        "completes",
    )


BENCHMARKS: dict[str, Callable[[], None]] = {
    "tokenize": bench_tokenize,
    "memory": bench_stage_memory,
    "loader": bench_loader,
    "repro": bench_repro,
    "scale": bench_scale,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"which to run: {', '.join(BENCHMARKS)} (default: all)")
    names = parser.parse_args().names or list(BENCHMARKS)
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark {sorted(unknown)[0]!r}: choose from {', '.join(BENCHMARKS)}")
    if not SHAKESPEARE.is_file():
        raise SystemExit(f"benchmarks need {SHAKESPEARE} (../shared beside the project)")
    if not Path(GNU_TIME).is_file():
        raise SystemExit(f"benchmarks need GNU time at {GNU_TIME}: apt-get install time")
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken-cache"))
    print(f"machine: {machine()}\n")
    print("| benchmark | ours | baseline | ratio | goal |\n|---|---|---|---|---|")
    for name in names:
        BENCHMARKS[name]()


if __name__ == "__main__":
    main()
