"""Tokenize a corpus folder into token shards, on this machine's threads or as Ray Data tasks on a cluster.

The corpus files (every file under the folder, in path order) are grouped into runs of about SHARD_BYTES of
input; each run becomes one shard, encoded and written on its own. So shards can be written in parallel by
any engine, and their bytes depend only on the files and the encoding: the engine changes how, never what.
The end-of-text token stands between two documents, so at the start of every shard but the first.

A .txt file (plain, .gz or .zst) is one document, streamed in chunks; a JSON-lines or Parquet file holds one
document per record (llmpipe.corpus).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llmpipe.corpus import corpus_format, iter_records
from llmpipe.errors import PipelineError
from llmpipe.files import clear_leftovers
from llmpipe.formats import ShardWriter, shard_name, token_dtype, write_token_index
from llmpipe.tokenizer import CHUNK_CHARS, NUM_THREADS, load_encoding, read_chunks, safe_cut, tokenize_documents

SHARD_BYTES = 256 << 20  # input bytes per shard: big enough to keep a worker busy, small enough to spread out
ENGINES = ("threads", "ray")
ENGINE_ENV = "LLMPIPE_ENGINE"  # how tokenize runs is not a param: switching it must not invalidate DVC's cache


def plan_shards(files: list[Path], shard_bytes: int = SHARD_BYTES) -> list[list[Path]]:
    """The files in order, cut into runs of at least `shard_bytes` bytes (the last run may be smaller)."""
    runs: list[list[Path]] = [[]]
    size = 0
    for path in files:
        if size >= shard_bytes:
            runs.append([])
            size = 0
        runs[-1].append(path)
        size += path.stat().st_size
    return runs


def pieces(text: str, chunk_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """`text` in pieces of at most chunk_chars characters, cut where tokens allow (tokenizer.safe_cut)."""
    while len(text) > chunk_chars:
        cut = safe_cut(text, chunk_chars)
        yield text[:cut]
        text = text[cut:]
    yield text


def documents(path: Path, text_field: str) -> Iterator[Iterator[str]]:
    """The documents of one corpus file, each as an iterator of text pieces.

    A file of no known corpus format is read as text, as every file was before JSON lines and Parquet.
    Raises PipelineError for a JSON-lines or Parquet file with no record.
    """
    kind = corpus_format(path)
    if kind is None or kind[0] == "txt":
        yield read_chunks(path)
        return
    empty = True
    for record in iter_records(path, text_field):
        empty = False
        yield pieces(record)
    if empty:
        raise PipelineError(f"{path} holds no record: remove it from the corpus, or add documents to it")


def encode_shard(
    index: int, files: list[Path], raw_dir: Path, tokens_dir: Path, params: dict[str, str], num_threads: int
) -> dict[str, Any]:
    """Encode `files` into shard `index` in tokens_dir; return its index entry and each file's place in it.

    `params` holds the tokenize params (encoding, literal_endoftext, text_field). The result is
    {"shard": {file, num_tokens, sha256}, "files": [{file, start, num_tokens, num_documents}], "head": [...]},
    with starts counted within the shard.
    """
    encoding = load_encoding(params["encoding"])
    document_files: list[int] = []  # the file of each document, in order

    def tagged() -> Iterator[Iterator[str]]:
        for k, path in enumerate(files):
            for document in documents(path, params["text_field"]):
                document_files.append(k)
                yield document

    with ShardWriter(tokens_dir / shard_name(index), token_dtype(encoding.n_vocab)) as writer:
        starts = tokenize_documents(
            tagged(),
            encoding,
            writer.append,
            params["literal_endoftext"],
            num_threads=num_threads,
            separate_first=index > 0,
        )
        entries = []
        for k, path in enumerate(files):
            first = document_files.index(k)
            last = len(document_files) - 1 - document_files[::-1].index(k)
            end = starts[last + 1] - 1 if last + 1 < len(starts) else writer.num_tokens
            relative = path.relative_to(raw_dir).as_posix()
            entries.append({"file": relative, "start": starts[first], "num_tokens": end - starts[first]})
            entries[-1]["num_documents"] = last - first + 1
        return {"shard": writer.close(), "files": entries, "head": writer.head}


def tokenize_corpus(
    files: list[Path],
    raw_dir: Path,
    tokens_dir: Path,
    params: dict[str, str],
    engine: str = "threads",
    on_shard: Callable[[int], object] = lambda size: None,
    shard_bytes: int = SHARD_BYTES,
) -> dict[str, Any]:
    """Encode the corpus `files` (under raw_dir) into shards and index.json in tokens_dir; return the index
    with "head", the first ids.

    engine "threads" encodes the shards one after another on all cores; "ray" encodes them as Ray Data tasks
    on a local Ray instance, or on the cluster that RAY_ADDRESS names (whose workers must see raw_dir and
    tokens_dir at the same paths). Both write the same bytes. on_shard(input bytes) follows the threads
    engine's progress; shard_bytes is plan_shards'. Raises PipelineError.
    """
    if engine not in ENGINES:
        raise PipelineError(f"{ENGINE_ENV}={engine} is not an engine: use one of {', '.join(ENGINES)}")
    runs = plan_shards(files, shard_bytes)
    if engine == "ray":
        results = encode_on_ray(runs, raw_dir, tokens_dir, params)
        for k in range(len(runs)):  # what a worker killed mid-shard left; its retry wrote the whole shard
            clear_leftovers(tokens_dir / shard_name(k))
    else:
        results = []
        for k, run in enumerate(runs):
            results.append(encode_shard(k, run, raw_dir, tokens_dir, params, NUM_THREADS))
            on_shard(sum(path.stat().st_size for path in run))
    offset, placed = 0, []
    for k, result in enumerate(results):
        placed += [{**entry, "shard": k, "start": offset + entry["start"]} for entry in result["files"]]
        offset += result["shard"]["num_tokens"]
    encoding = load_encoding(params["encoding"])
    shards = [result["shard"] for result in results]
    index = write_token_index(tokens_dir, params["encoding"], encoding.n_vocab, encoding.eot_token, shards, placed)
    return {**index, "head": results[0]["head"]}


def encode_on_ray(runs: list[list[Path]], raw_dir: Path, tokens_dir: Path, params: dict[str, str]) -> list[dict]:
    """encode_shard for every run as Ray Data tasks, one CPU each; results in shard order.

    A task whose worker dies is retried by Ray (ShardWriter renames a shard into place only when it is whole).
    Raises PipelineError when Ray cannot start or a task fails for good.
    """
    try:
        import ray
    except ImportError:
        raise PipelineError(f"{ENGINE_ENV}=ray needs Ray: pip install 'llmpipe[ray]' (make setup-dev)") from None
    env = {name: os.environ[name] for name in ("TIKTOKEN_CACHE_DIR",) if name in os.environ}
    ray.init(address=os.environ.get("RAY_ADDRESS"), runtime_env={"env_vars": env}, log_to_driver=False)
    try:
        # Absolute paths: a worker's working directory is not the driver's (the stage passes data/raw, data/tokens).
        raw_dir, tokens_dir = Path(raw_dir).absolute(), Path(tokens_dir).absolute()
        items = [{"shard": k, "files": [str(Path(path).absolute()) for path in run]} for k, run in enumerate(runs)]

        def encode(item: dict) -> dict:
            files = [Path(path) for path in item["files"]]
            return {
                "shard": item["shard"],
                "result": encode_shard(item["shard"], files, raw_dir, tokens_dir, params, 1),
            }

        rows = ray.data.from_items(items, override_num_blocks=len(items)).map(encode, num_cpus=1, max_retries=3)
        results = sorted(rows.take_all(), key=lambda row: row["shard"])
    except ray.exceptions.RayError as error:
        cause = error.cause if isinstance(getattr(error, "cause", None), PipelineError) else error
        raise PipelineError(f"the Ray engine failed: {cause}") from None
    finally:
        ray.shutdown()
    return [row["result"] for row in results]
