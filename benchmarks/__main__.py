"""Benchmarks: the pipeline and its baseline measured side by side in one run, with their ratios.

    python -m benchmarks                  # the benchmarks below but the training ones, in this order (20 minutes)
    python -m benchmarks sampler loader   # some of them, by name

    sampler    sampler memory per window: ShuffledWindows and DistributedWindows against torch's RandomSampler and
               DistributedSampler (10 seconds)
    tokenize   tokenize throughput against tiktoken's encode_ordinary_batch on the same text, per corpus format
               (about 2 minutes)
    loader     DataLoader samples per second against the book's create_dataloader_v1 DataLoader (20 seconds)
    repro      `dvc repro embed` in a fresh copy of the project, cold and no-op, against the book's notebook as one
               script (10 seconds)
    stages     every chapter-2 stage on a 1 GB mixed corpus: time and peak RSS against the 512 MiB budget, and the
               book's notebook on 4 MB for memory per MB of text (about 1.5 minutes)
    ray        the tokenize stage on the 1 GB corpus with the thread engine, and with the Ray engine on a local
               instance, a one-node and a two-node local cluster (about 5 minutes)
    scale      every stage on a 10 GB mixed corpus: time and peak RSS, and the total (about 11 minutes; 5 GB of
               corpus and about 20 GB of outputs under .bench/)
    open       time to open the 10 GB corpus's dataset, against reading it once (verify=True) (seconds once scale
               has run; it runs scale's pipeline first when its dataset is missing)

Training benchmarks, run only when named (tens of minutes each), each its own module with its own options:

    book-training   python -m benchmarks.book_training: the book's chapter-5 training run against its own loop
    stride-grid     python -m benchmarks.stride_grid: stride 1, 2, 4 and max_length at equal optimizer steps

Corpora are tiny Shakespeare from ../shared repeated to the size asked (benchmarks/corpora.py), made once under
.bench/ (git-ignored) and kept for reruns. Stages run as dvc.yaml's commands in a scratch project under .bench/;
peak RSS is GNU time's %M (the largest resident set of the command's process), so GNU time must be installed
(Debian: apt-get install time).
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
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks.corpora import ROOT, SHAKESPEARE, SHARED, VERDICT, WORK, corpus_files, disk_bytes, mixed_corpus
from llmpipe.corpus import iter_records
from llmpipe.data import TokenWindowDataset, collate_windows, create_dataloader, load_dataset
from llmpipe.encode import pieces, tokenize_corpus
from llmpipe.sampling import ShuffledWindows
from llmpipe.tokenizer import NUM_THREADS, load_encoding, read_chunks

MB = 10**6
MiB = 2**20
GNU_TIME = "/usr/bin/time"  # Debian's package `time`
RSS_BUDGET = 512 * MiB
STAGES = ("fetch", "tokenize", "window", "dataset", "embed", "sweep", "stats")  # chapter 2's, in dvc.yaml order
TOKENIZE_PARAMS = {"encoding": "gpt2", "literal_endoftext": "text", "text_field": "text"}


# Measuring


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    return (
        f"{platform.machine()} {cpu}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, torch {torch.__version__}"
    )


def load() -> str:
    return "load average " + " ".join(f"{value:.1f}" for value in os.getloadavg())


def measured(command: list[str], cwd: Path, env: dict | None = None, *, inherit: bool = True) -> tuple[float, int, str]:
    """Run a command with `env` added to this environment (or, inherit=False, as its whole environment); return its
    wall time, its peak RSS in bytes and its stdout.

    GNU time's %M is the largest resident set of the command's process and the children it waited for, as the
    kernel counts it; this process's memory is not in it.
    """
    start = time.perf_counter()
    result = subprocess.run(
        [GNU_TIME, "-f", "%M", *command],
        cwd=cwd,
        env={**(os.environ if inherit else {}), **(env or {})},
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"benchmark command failed: {' '.join(command)} (in {cwd})\n{result.stderr[-3000:]}")
    return seconds, int(result.stderr.split()[-1]) * 1024, result.stdout


def best_time(function: Callable[[], object], repeats: int) -> float:
    """The shortest wall time of `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def table(title: str, *columns: str) -> None:
    print(f"\n{title} ({load()})\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns), flush=True)


def row(*cells: object) -> None:
    print("| " + " | ".join(str(cell) for cell in cells) + " |", flush=True)


def mib(num_bytes: float) -> str:
    return f"{num_bytes / MiB:,.0f} MiB"


# Scratch projects


def stage_commands() -> dict[str, list[str]]:
    """Each chapter-2 stage's command as dvc.yaml writes it, with this interpreter for `python`."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: [sys.executable if w == "python" else w for w in stages[name]["cmd"].split()] for name in STAGES}


def stage_env() -> dict[str, str]:
    return {"CORPUS_MIRROR": str(VERDICT.parent), "TIKTOKEN_CACHE_DIR": os.environ["TIKTOKEN_CACHE_DIR"]}


def scratch_project(name: str, corpus: Path) -> Path:
    """A folder where stages run as dvc.yaml runs them: stages/, and params.yaml whose fetch also copies the
    corpus's .txt files (its txt/ folder)."""
    project = WORK / name
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    (project / "stages").symlink_to(ROOT / "stages")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["fetch"]["sources"] = [{"path": str(corpus / "txt")}]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def link_corpus(corpus: Path, raw_dir: Path, kinds: tuple[str, ...]) -> None:
    """Hard-link the corpus's files of `kinds` (its subfolders) into raw_dir/<kind>/."""
    for kind in kinds:
        (raw_dir / kind).mkdir(parents=True, exist_ok=True)
        for path in corpus_files(corpus / kind):
            os.link(path, raw_dir / kind / path.name)


def run_pipeline(name: str, corpus: Path) -> dict[str, tuple[float, int]]:
    """Every chapter-2 stage, one after another, in a scratch project; each stage's time and peak RSS.

    fetch copies the-verdict.txt and the corpus's .txt files into data/raw; the .jsonl.zst and .parquet files are
    then linked in beside them.
    """
    project = scratch_project(name, corpus)
    figures = {}
    for stage, command in stage_commands().items():
        seconds, rss, _ = measured(command, project, stage_env())
        figures[stage] = (seconds, rss)
        if stage == "fetch":
            link_corpus(corpus, project / "data" / "raw", ("jsonl", "parquet"))
    return figures


def corpus_line(corpus: Path, size_mb: int) -> str:
    files = corpus_files(corpus)
    kinds = ", ".join(f"{len(corpus_files(corpus / k))} {k}" for k in ("txt", "jsonl", "parquet"))
    return f"{size_mb:,} MB of text in {len(files)} files ({kinds}), {disk_bytes(corpus) / MB:,.0f} MB on disk"


def pipeline_table(title: str, name: str, size_mb: int) -> int:
    """Run the stages on a mixed corpus of size_mb MB and print the table; return the largest peak RSS."""
    corpus = mixed_corpus(size_mb)
    figures = run_pipeline(name, corpus)
    project = WORK / name
    metrics = {stage: json.loads((project / "metrics" / f"{stage}.json").read_text()) for stage in STAGES}
    table(f"{title}: {corpus_line(corpus, size_mb)}", "stage", "time", "peak RSS", "peak / 512 MiB budget", "output")
    outputs = {
        "fetch": f"{metrics['fetch'].get('num_documents', '?')} documents copied",
        "tokenize": f"{metrics['tokenize']['num_tokens']:,} tokens, {metrics['tokenize']['num_documents']:,} documents,"
        f" {metrics['tokenize']['num_shards']} shards",
        "window": f"{metrics['window']['num_windows']:,} windows",
        "dataset": f"{metrics['dataset']['num_windows']:,} training windows",
        "embed": f"input embeddings {metrics['embed']['input_embedding_shape']}",
        "sweep": "4 window configs",
        "stats": f"{metrics['stats']['num_tokens']:,} tokens counted",
    }
    for stage, (seconds, rss) in figures.items():
        row(stage, f"{seconds:,.1f} s", mib(rss), f"{rss / RSS_BUDGET:.2f}", outputs[stage])
    total = sum(seconds for seconds, _ in figures.values())
    peak = max(rss for _, rss in figures.values())
    row(
        "**all**",
        f"**{total:,.1f} s** ({size_mb / total:.1f} MB/s)",
        f"**{mib(peak)}**",
        f"{peak / RSS_BUDGET:.2f}",
        "",
    )
    return peak


# Benchmarks


SAMPLER_CODE = """
import resource, sys, torch
from torch.utils.data import DistributedSampler, RandomSampler
from llmpipe.sampling import DistributedWindows, ShuffledWindows

kind, n, take = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

class Windows:
    def __len__(self):
        return n

make = {
    "ShuffledWindows": lambda: ShuffledWindows(n, 123),
    "DistributedWindows": lambda: DistributedWindows(n, num_replicas=2, rank=0, seed=123),
    "RandomSampler": lambda: RandomSampler(Windows(), generator=torch.Generator().manual_seed(123)),
    "DistributedSampler": lambda: DistributedSampler(Windows(), num_replicas=2, rank=0, seed=123),
}
sampler = make[kind]()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
iterator = iter(sampler)
for _ in range(take):
    next(iterator)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def bench_sampler(num_windows: int = 30_000_000, large: int = 3_000_000_000, take: int = 1_000_000) -> None:
    """Sampler memory per window: how much the peak RSS grows while a sampler yields its first `take` indices,
    divided by the windows it shuffles. num_windows is about a 100 MB corpus at stride 1; ShuffledWindows is also
    measured at `large` windows (a 10 GB corpus), where torch's samplers would need over 100 GB."""

    def grown(kind: str, n: int) -> int:
        _, _, out = measured([sys.executable, "-c", SAMPLER_CODE, kind, str(n), str(take)], ROOT)
        return int(out.split()[-1])

    table(
        f"Sampler memory: peak RSS growth while yielding the first {take:,} indices of a shuffled epoch",
        "windows",
        "ours",
        "ours: bytes/window",
        "torch",
        "torch: bytes/window",
        "torch / ours",
    )
    for ours, theirs in (("ShuffledWindows", "RandomSampler"), ("DistributedWindows", "DistributedSampler")):
        ours_bytes, their_bytes = grown(ours, num_windows), grown(theirs, num_windows)
        row(
            f"{num_windows:,}",
            f"{ours}: {mib(ours_bytes)}",
            f"{ours_bytes / num_windows:.3f}",
            f"{theirs} (2 replicas, rank 0)" if "Distributed" in theirs else theirs,
            f"{their_bytes / num_windows:.1f}",
            f"{their_bytes / max(ours_bytes, 1):,.0f}×",
        )
    large_bytes = grown("ShuffledWindows", large)
    row(f"{large:,}", f"ShuffledWindows: {mib(large_bytes)}", f"{large_bytes / large:.6f}", "not run", "–", "–")


def bench_tokenize(size_mb: int = 300, repeats: int = 3) -> None:
    """Tokenize throughput: tokenize_corpus (files read, encoded on all cores, shards written and hashed) against
    tiktoken's encode_ordinary_batch on the same text already in memory, cut into the same pieces, on the same
    number of threads. One row per format, a third of size_mb each; the best of `repeats` runs of each, alternated."""
    corpus = mixed_corpus(size_mb)
    encoding = load_encoding("gpt2")
    out = WORK / "tokenize-throughput"
    table(
        f"Tokenize throughput, {NUM_THREADS} threads, best of {repeats}",
        "format",
        "text",
        "ours (files → shards)",
        "tiktoken encode_ordinary_batch (in memory)",
        "ours / tiktoken",
        "goal",
    )
    for kind in ("txt", "jsonl", "parquet"):
        files = corpus_files(corpus / kind)
        if kind == "txt":
            texts = [piece for path in files for piece in read_chunks(path)]
        else:
            texts = [piece for path in files for record in iter_records(path) for piece in pieces(record)]
        size = sum(len(text) for text in texts)  # all ASCII: characters are bytes

        ours_s, base_s = [], []
        for _ in range(repeats):
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            start = time.perf_counter()
            tokenize_corpus(files, corpus / kind, out, TOKENIZE_PARAMS, "threads")
            ours_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            encoding.encode_ordinary_batch(texts, num_threads=NUM_THREADS)
            base_s.append(time.perf_counter() - start)
        ours_rate, base_rate = size / MB / min(ours_s), size / MB / min(base_s)
        row(
            files[0].name.split(".", 1)[1],
            f"{size / MB:,.0f} MB in {len(texts):,} pieces",
            f"{ours_rate:.1f} MB/s",
            f"{base_rate:.1f} MB/s",
            f"{ours_rate / base_rate:.2f}×",
            "≥ 0.95×",
        )
        del texts
    shutil.rmtree(out, ignore_errors=True)


def samples_per_second(loader, batches: int) -> float:
    """Samples per second of `batches` batches of 32 drawn from `loader` (epochs repeat as needed)."""
    drawn = 0
    start = time.perf_counter()
    while drawn < batches:
        for inputs, _ in loader:
            assert inputs.shape == (32, 256)
            drawn += 1
            if drawn == batches:
                break
    return batches * 32 / (time.perf_counter() - start)


class ItemByItem(TokenWindowDataset):
    """The same dataset with the batched gather turned off, to measure what it gains."""

    __getitems__ = None


def bench_loader(batches: int = 500) -> None:
    """DataLoader samples per second, batch 32, max_length 256: create_dataloader's loader (memory-mapped ids, the
    seeded ShuffledWindows order, one gather a batch) against the book's GPTDatasetV1 in a shuffled DataLoader, as
    create_dataloader_v1 builds it, on tiny Shakespeare."""
    from llms_from_scratch.ch02 import GPTDatasetV1

    encoding = load_encoding("gpt2")
    text = SHAKESPEARE.read_text(encoding="utf-8")
    path = WORK / "loader-train.bin"
    WORK.mkdir(exist_ok=True)
    np.array(encoding.encode_ordinary(text), dtype=np.uint16).tofile(path)
    table(
        f"DataLoader samples/s, batch 32, max_length 256, {batches} batches, tiny Shakespeare",
        "stride",
        "ours",
        "ours, item by item",
        "book's GPTDatasetV1",
        "ours / book",
    )
    for stride in (128, 1):
        dataset = TokenWindowDataset(path, "uint16", 256, stride)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=32, sampler=ShuffledWindows(len(dataset), 0), drop_last=True, collate_fn=collate_windows
        )
        ours = samples_per_second(loader, batches)
        itemwise = samples_per_second(
            torch.utils.data.DataLoader(
                ItemByItem(path, "uint16", 256, stride),
                batch_size=32,
                sampler=ShuffledWindows(len(dataset), 0),
                drop_last=True,
            ),
            batches,
        )
        book_dataset = GPTDatasetV1(text, encoding, 256, stride)
        book_loader = torch.utils.data.DataLoader(book_dataset, batch_size=32, shuffle=True, drop_last=True)
        book = samples_per_second(book_loader, batches)
        del book_dataset, book_loader
        row(stride, f"{ours:,.0f}/s", f"{itemwise:,.0f}/s", f"{book:,.0f}/s", f"{ours / book:.2f}×")


def repro_project(name: str) -> tuple[Path, dict]:
    """A fresh git repo holding a copy of the project's files (tracked and untracked, not ignored)."""
    project = WORK / name
    shutil.rmtree(project, ignore_errors=True)
    listing = ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"]
    files = subprocess.run(listing, cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    for file in filter(None, files):
        if (ROOT / file).is_file():
            (project / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / file, project / file)
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **stage_env()}
    for command in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "bench"],
    ):
        subprocess.run(command, cwd=project, env={**os.environ, **env}, check=True, capture_output=True)
    return project, env


def bench_repro() -> None:
    """`dvc repro embed` (fetch, tokenize, window, dataset, embed: chapter 2 to its end point) on the default corpus
    in a fresh copy of the project, cold and then with nothing to do, against the book's notebook as one script
    (benchmarks/book.py) on the same text."""
    project, env = repro_project("repro")
    dvc = [sys.executable, "-m", "dvc", "repro", "embed"]
    cold, cold_rss, _ = measured(dvc, project, env)
    noop, _, _ = measured(dvc, project, env)
    book, book_rss, _ = measured([sys.executable, "-m", "benchmarks.book", str(VERDICT)], ROOT, env)
    table(
        "dvc repro embed, the-verdict.txt, fresh copy of the project", "run", "ours", "book's notebook", "ours / book"
    )
    row("cold", f"{cold:.1f} s", f"{book:.1f} s", f"{cold / book:.1f}×")
    row("no-op", f"{noop:.2f} s", "–", "–")


def bench_stages(size_mb: int = 1000, book_mb: int = 4) -> None:
    """Every chapter-2 stage on a 1 GB mixed corpus (a third each .txt, .jsonl.zst, .parquet), run as dvc.yaml's
    commands with the default params: each stage's time and peak RSS against the 512 MiB budget. Then the book's
    notebook as one script on the first book_mb MB of the same text: its peak RSS per MB of text against ours."""
    peak = pipeline_table(f"Stages at {size_mb:,} MB", f"pipeline-{size_mb}mb", size_mb)
    text = corpus_files(mixed_corpus(size_mb) / "txt")[0].read_bytes()[: book_mb * MB]
    cut = text.rfind(b"\n") + 1
    book_text = WORK / f"book-{book_mb}mb.txt"
    book_text.write_bytes(text[:cut])
    book_s, book_rss, _ = measured([sys.executable, "-m", "benchmarks.book", str(book_text)], ROOT, stage_env())
    table(
        "Peak RSS per MB of text: the stages at their peak against the book's notebook (default params)",
        "run",
        "text",
        "time",
        "peak RSS",
        "peak RSS per MB of text",
    )
    row("ours, largest stage peak", f"{size_mb:,} MB", "–", mib(peak), f"{peak / size_mb / 1024:,.0f} KiB")
    row(
        "book's notebook",
        f"{cut / MB:.1f} MB",
        f"{book_s:.1f} s",
        mib(book_rss),
        f"{book_rss / cut * MB / 1024:,.0f} KiB",
    )
    row("book / ours", "", "", "", f"{(book_rss / (cut / MB)) / (peak / size_mb):,.0f}×")


def bench_ray(size_mb: int = 1000) -> None:
    """The tokenize stage on the 1 GB mixed corpus: the thread engine (every core in one process) against the Ray
    Data engine (one task a shard, one CPU each) on a local instance that the stage starts, on a one-node cluster of
    2 CPUs and on a two-node cluster of 1 CPU a node, all on this machine. Same files; the shards must be the same
    bytes. The peak RSS is the stage process's (Ray's workers are other processes)."""
    from ray.cluster_utils import Cluster

    corpus = mixed_corpus(size_mb)
    project = scratch_project("ray", corpus)
    link_corpus(corpus, project / "data" / "raw", ("txt", "jsonl", "parquet"))
    command = stage_commands()["tokenize"]
    env = {name: value for name, value in os.environ.items() if name not in ("RAY_ADDRESS", "LLMPIPE_ENGINE")}

    def run(engine: str, address: str | None = None) -> tuple[float, int, list[str]]:
        run_env = {**env, **stage_env(), "LLMPIPE_ENGINE": engine, **({"RAY_ADDRESS": address} if address else {})}
        seconds, rss, _ = measured(command, project, run_env, inherit=False)
        index = json.loads((project / "data" / "tokens" / "index.json").read_text())
        return seconds, rss, [shard["sha256"] for shard in index["shards"]]

    results = {"threads": run("threads")}
    results["ray, local instance started by the stage"] = run("ray")
    for label, nodes in (("ray, 1-node cluster (2 CPUs)", [2]), ("ray, 2-node cluster (1 CPU each)", [1, 1])):
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": nodes[0]})
        for cpus in nodes[1:]:
            cluster.add_node(num_cpus=cpus)
        cluster.wait_for_nodes()
        try:
            results[label] = run("ray", cluster.address)
        finally:
            cluster.shutdown()
    threads_s, _, threads_shards = results["threads"]
    table(
        f"Tokenize engines: {corpus_line(corpus, size_mb)}, {len(threads_shards)} shards",
        "engine",
        "time",
        "MB/s",
        "stage peak RSS",
        "time / threads",
        "same shards",
    )
    for label, (seconds, rss, shards) in results.items():
        row(
            label,
            f"{seconds:.1f} s",
            f"{size_mb / seconds:.1f}",
            mib(rss),
            f"{seconds / threads_s:.2f}×",
            "yes" if shards == threads_shards else "NO",
        )
    shutil.rmtree(project, ignore_errors=True)


def bench_scale(size_mb: int = 10_000) -> None:
    """Every chapter-2 stage on a 10 GB mixed corpus (a third each .txt, .jsonl.zst, .parquet, files of at most
    250 MB of text), run as dvc.yaml's commands: each stage's time and peak RSS, and the total."""
    pipeline_table(f"Stages at {size_mb:,} MB", f"pipeline-{size_mb}mb", size_mb)


def bench_open(size_mb: int = 10_000, repeats: int = 5) -> None:
    """Time to open the dataset the 10 GB corpus gives (load_dataset checks dataset.json and the split's size, reads
    no id), and to draw the first batch from create_dataloader, against load_dataset(verify=True), which reads every
    id once to check its sha256 (from the page cache if the file is still there)."""
    dataset_dir = WORK / f"pipeline-{size_mb}mb" / "data" / "dataset"
    if not (dataset_dir / "dataset.json").is_file():
        run_pipeline(f"pipeline-{size_mb}mb", mixed_corpus(size_mb))
    opened = best_time(lambda: load_dataset(dataset_dir), repeats)
    first = best_time(lambda: next(iter(create_dataloader(dataset_dir))), repeats)
    verified = best_time(lambda: load_dataset(dataset_dir, verify=True), 1)
    dataset = load_dataset(dataset_dir)
    size = dataset.tokens_path.stat().st_size
    table(
        f"Opening the {size_mb:,} MB corpus's dataset: train.bin {size / MB:,.0f} MB, {len(dataset):,} windows",
        "operation",
        "time",
        "verify=True / this",
    )
    row(f"load_dataset (best of {repeats})", f"{opened * 1000:.2f} ms", f"{verified / opened:,.0f}×")
    row(f"create_dataloader + first batch (best of {repeats})", f"{first * 1000:.2f} ms", f"{verified / first:,.0f}×")
    row("load_dataset(verify=True)", f"{verified:.1f} s ({size / MB / verified:,.0f} MB/s)", "1×")


BENCHMARKS: dict[str, Callable[[], None]] = {
    "sampler": bench_sampler,
    "tokenize": bench_tokenize,
    "loader": bench_loader,
    "repro": bench_repro,
    "stages": bench_stages,
    "ray": bench_ray,
    "scale": bench_scale,
    "open": bench_open,
}


def separately(module: str) -> Callable[[], None]:
    """A benchmark module of its own (`python -m benchmarks.<module>`), run with its default options."""

    def bench() -> None:
        subprocess.run([sys.executable, "-m", f"benchmarks.{module}"], cwd=ROOT, check=True)

    bench.__doc__ = f"python -m benchmarks.{module}"
    return bench


# Named only: not in the default run.
TRAINING = {
    name: separately(module)
    for name, module in (("book-training", "book_training"), ("stride-grid", "stride_grid"))
    if (ROOT / "benchmarks" / f"{module}.py").is_file()
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    choices = {**BENCHMARKS, **TRAINING}
    parser.add_argument(
        "names", nargs="*", help=f"which to run: {', '.join(choices)} (default: all but {', '.join(TRAINING)})"
    )
    names = parser.parse_args().names or list(BENCHMARKS)
    unknown = [name for name in names if name not in choices]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}: choose from {', '.join(choices)}")
    if not SHAKESPEARE.is_file():
        raise SystemExit(f"benchmarks need {SHAKESPEARE} (../shared beside the project)")
    if not Path(GNU_TIME).is_file():
        raise SystemExit(f"benchmarks need GNU time at {GNU_TIME}: apt-get install time")
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken-cache"))
    WORK.mkdir(exist_ok=True)
    print(f"machine: {machine()}")
    print(f"run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {' '.join(names)}", flush=True)
    failed = []
    for name in names:
        start = time.perf_counter()
        try:
            choices[name]()
        except Exception as error:  # one benchmark failing leaves the others' figures
            failed.append(name)
            print(f"\n{name} FAILED: {type(error).__name__}: {error}", flush=True)
        print(f"\n({name}: {time.perf_counter() - start:,.0f} s)", flush=True)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
