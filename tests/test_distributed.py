"""Training code consumes data/dataset/ under torch.distributed: two processes (gloo, CPU), DistributedWindows.

The dataset folder is built by the real stages (tokenize, window, dataset) on a small corpus. Each rank loads
it with `create_dataloader(..., distributed=True)`, draws its share through the loader's
DistributedWindows sampler, and writes what it got (JSON, one file per rank); the test then checks the shares are
disjoint, cover every window, and are reshuffled each epoch in an order anyone can recompute from the seed.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import make_project, run_ok, write_ranks_file

from llmpipe.data import create_dataloader, load_dataset
from llmpipe.sampling import DistributedWindows

pytestmark = pytest.mark.distributed

WORLD_SIZE = 2
EPOCHS = 2


def train_rank(rank: int, init_file: str, dataset_dir: str, out_dir: str) -> None:
    """One training process: what a DDP training loop does with the dataset, recording what it is handed."""
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=120)
    )
    try:
        # The README's loader as training code uses it; keeping partial batches lets the test see every window.
        loader = create_dataloader(dataset_dir, distributed=True, drop_last=False)
        sampler = loader.sampler
        epochs = []
        for epoch in range(EPOCHS):
            sampler.set_epoch(epoch)
            inputs = [row.tolist() for batch_inputs, _ in loader for row in batch_inputs]
            seen = torch.tensor([len(inputs)])
            dist.all_reduce(seen)  # the ranks agree on how many windows the epoch covered
            epochs.append({"indices": list(sampler), "inputs": inputs, "seen_by_all": int(seen)})
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(epochs))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    """data/dataset/ of a small project, with an even number of windows so that two ranks split it exactly."""
    base = tmp_path_factory.mktemp("distributed")
    ranks = write_ranks_file(base / "tiny.tiktoken")
    window = {"max_length": 6, "stride": 1}
    project = make_project(base / "project", ranks, {"window": window, "dataset": {"batch_size": 4, "seed": 7}})
    for stage in ("tokenize", "window", "dataset"):
        run_ok(stage, project)
    if len(load_dataset(project / "data" / "dataset")) % WORLD_SIZE:
        # With stride 1 one token more per window is one window fewer: the count becomes even.
        make_project(project, ranks, {"window": {**window, "max_length": 7}, "dataset": {"batch_size": 4, "seed": 7}})
        for stage in ("window", "dataset"):
            run_ok(stage, project)
    return project / "data" / "dataset"


@pytest.fixture(scope="module")
def shares(dataset_dir, tmp_path_factory) -> list[list[dict]]:
    """What each of the two ranks was handed, per epoch."""
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(train_rank, args=(str(out / "init"), str(dataset_dir), str(out)), nprocs=WORLD_SIZE, join=True)
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)]


def test_ranks_get_disjoint_windows_that_cover_the_dataset(dataset_dir, shares):
    dataset = load_dataset(dataset_dir)
    assert len(dataset) % WORLD_SIZE == 0 and len(dataset) > 20

    for epoch in range(EPOCHS):
        first, second = (set(share[epoch]["indices"]) for share in shares)
        assert len(first) == len(second) == len(dataset) // WORLD_SIZE
        assert first.isdisjoint(second)
        assert first | second == set(range(len(dataset)))
        assert all(share[epoch]["seen_by_all"] == len(dataset) for share in shares)


def test_each_rank_loads_the_windows_its_sampler_chose(dataset_dir, shares):
    dataset = load_dataset(dataset_dir)

    for share in shares:
        for epoch in share:
            assert epoch["inputs"] == [dataset[index][0].tolist() for index in epoch["indices"]]


def test_the_shuffle_is_seeded_and_changes_every_epoch(dataset_dir, shares):
    dataset = load_dataset(dataset_dir)

    for rank, share in enumerate(shares):
        assert share[0]["indices"] != share[1]["indices"]
        assert share[0]["indices"] != sorted(share[0]["indices"])
        for epoch in range(EPOCHS):
            # The same order, recomputed here in another process from nothing but the recorded seed.
            sampler = DistributedWindows(len(dataset), num_replicas=WORLD_SIZE, rank=rank, seed=dataset.config["seed"])
            sampler.set_epoch(epoch)
            assert list(sampler) == share[epoch]["indices"]
