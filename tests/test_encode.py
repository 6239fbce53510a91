"""Token shards: any shard plan and either engine (threads, Ray Data) give the same ids; corpus formats in a
folder become documents in path order; a Ray worker node killed mid-job changes nothing in the output."""

from __future__ import annotations

import gzip
import json
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import VERDICT, run_stage, set_params

from llmpipe.encode import plan_shards, tokenize_corpus
from llmpipe.formats import load_tokens
from llmpipe.tokenizer import corpus_files, load_encoding

PARAMS = {"encoding": "gpt2", "literal_endoftext": "text", "text_field": "text"}


@pytest.fixture
def mixed_corpus(tmp_path) -> tuple[Path, list[str]]:
    """A folder holding every corpus format, and its documents' texts in the order tokenize reads them."""
    raw = tmp_path / "raw"
    (raw / "b").mkdir(parents=True)
    verdict = VERDICT.read_text(encoding="utf-8")
    stories = [f"Story {i}: the keeper climbed the stair.\nThe end." for i in range(40)]
    (raw / "a.txt").write_text(verdict[:3000], encoding="utf-8")
    (raw / "b" / "c.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress("".join(json.dumps({"text": t}) + "\n" for t in stories[:25]).encode())
    )
    table = pa.table({"text": stories[25:], "id": list(range(15))})
    pq.write_table(table, raw / "b" / "d.parquet", row_group_size=4)
    (raw / "e.txt.gz").write_bytes(gzip.compress(verdict[3000:9000].replace("\n", "\r\n").encode()))
    return raw, [verdict[:3000], *stories, verdict[3000:9000]]


def expected_ids(texts: list[str]) -> list[int]:
    gpt2 = load_encoding("gpt2")
    ids: list[int] = []
    for k, text in enumerate(texts):
        ids += ([gpt2.eot_token] if k else []) + gpt2.encode_ordinary(text)
    return ids


def test_every_format_is_read_as_documents_in_path_order(gpt2_cache, mixed_corpus, tmp_path):
    raw, texts = mixed_corpus
    tokens_dir = tmp_path / "tokens"
    tokens_dir.mkdir()

    index = tokenize_corpus(corpus_files(raw), raw, tokens_dir, PARAMS)

    tokens, loaded = load_tokens(tokens_dir, verify=True)
    assert tokens.tolist() == expected_ids(texts)
    assert loaded == {key: value for key, value in index.items() if key != "head"}
    assert [(f["file"], f["num_documents"]) for f in index["files"]] == [
        ("a.txt", 1),
        ("b/c.jsonl.zst", 25),
        ("b/d.parquet", 15),
        ("e.txt.gz", 1),
    ]


@pytest.mark.parametrize("shard_bytes", [1, 2000, 5000, 1 << 30])
def test_any_shard_plan_gives_the_same_ids_and_places(gpt2_cache, mixed_corpus, tmp_path, shard_bytes):
    raw, texts = mixed_corpus
    tokens_dir = tmp_path / "tokens"
    tokens_dir.mkdir()

    index = tokenize_corpus(corpus_files(raw), raw, tokens_dir, PARAMS, shard_bytes=shard_bytes)

    tokens, _ = load_tokens(tokens_dir, verify=True)
    assert tokens.tolist() == expected_ids(texts)
    assert len(index["shards"]) == len(plan_shards(corpus_files(raw), shard_bytes))
    for entry in index["files"]:  # each file's ids are where the index says, whatever the shard
        if entry["num_documents"] == 1 and not entry["file"].endswith(("zst", "parquet")):
            text = texts[0] if entry["file"] == "a.txt" else texts[-1]
            start, end = entry["start"], entry["start"] + entry["num_tokens"]
            assert tokens[start:end].tolist() == load_encoding("gpt2").encode_ordinary(text)


def test_the_stage_reads_the_text_field_the_params_name(gpt2_cache, tmp_path):
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "stories.jsonl").write_text("".join(json.dumps({"body": f"tale {i}"}) + "\n" for i in range(3)))
    set_params(tmp_path, {"tokenize": {"text_field": "body"}})

    result = run_stage("tokenize", tmp_path)

    assert result.returncode == 0, result.stderr
    tokens, index = load_tokens(tmp_path / "data" / "tokens")
    assert tokens.tolist() == expected_ids(["tale 0", "tale 1", "tale 2"])
    metrics = json.loads((tmp_path / "metrics" / "tokenize.json").read_text())
    assert (metrics["num_documents"], metrics["num_files"], metrics["num_shards"]) == (3, 1, 1)


def shard_bytes_of(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture
def big_corpus(tmp_path) -> Path:
    """Eight files of about 0.6 MB: eight shards of a few seconds' work each for one Ray worker."""
    raw = tmp_path / "raw"
    raw.mkdir()
    verdict = VERDICT.read_text(encoding="utf-8")
    for k in range(8):
        (raw / f"part-{k}.txt").write_text(f"Part {k}.\n" + verdict * 120, encoding="utf-8")
    return raw


def tokenize_with(engine: str, raw: Path, tokens_dir: Path) -> dict[str, bytes]:
    tokens_dir.mkdir()
    tokenize_corpus(corpus_files(raw), raw, tokens_dir, PARAMS, engine, shard_bytes=2_000_000)
    return shard_bytes_of(tokens_dir)


@pytest.fixture
def ray_cluster(monkeypatch):
    """A real Ray cluster on this machine: a head that runs no task and two worker nodes of one CPU each."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    yield cluster, workers
    cluster.shutdown()


@pytest.mark.distributed
def test_the_ray_engine_writes_the_same_bytes_as_the_threads_engine(gpt2_cache, big_corpus, tmp_path, ray_cluster):
    on_threads = tokenize_with("threads", big_corpus, tmp_path / "threads")

    on_ray = tokenize_with("ray", big_corpus, tmp_path / "ray")

    assert len(on_threads) == 9  # eight shards and the index
    assert on_ray == on_threads


@pytest.mark.distributed
def test_a_worker_node_killed_mid_job_changes_nothing(gpt2_cache, big_corpus, tmp_path, ray_cluster):
    cluster, workers = ray_cluster
    on_threads = tokenize_with("threads", big_corpus, tmp_path / "threads")
    killed, stop = threading.Event(), threading.Event()

    def kill_the_node_of_the_first_half_written_shard():
        """A shard's temporary name ends in its worker's pid; a worker is a child of its node's raylet."""
        raylets = {node.all_processes["raylet"][0].process.pid: node for node in workers}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not stop.is_set():
            for path in (tmp_path / "ray").glob(".tokens-*.tmp-*"):
                pid = path.name.rsplit("-", 1)[1]
                try:
                    parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                except OSError:
                    continue  # the shard was finished meanwhile
                cluster.remove_node(raylets[parent], allow_graceful=False)
                killed.set()
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_the_node_of_the_first_half_written_shard)
    (tmp_path / "ray").mkdir()
    killer.start()
    try:
        tokenize_corpus(corpus_files(big_corpus), big_corpus, tmp_path / "ray", PARAMS, "ray", shard_bytes=2_000_000)
    finally:
        stop.set()
        killer.join()

    assert killed.is_set(), "the workers were never caught writing"
    assert shard_bytes_of(tmp_path / "ray") == on_threads
