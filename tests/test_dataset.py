"""Stage dataset: a Dataset of (input, target) windows over a memmap, and a seeded DataLoader."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from conftest import CHAIN_DATASET, CHAIN_WINDOW, assert_one_line_error, copy_project, run_stage, set_params, snapshot
from torch.utils.data import DataLoader

from llmpipe.data import TokenWindowDataset, collate_windows, create_dataloader, load_dataset
from llmpipe.errors import PipelineError
from llmpipe.formats import DATASET_FORMAT as FORMAT
from llmpipe.formats import ids_sha256, load_tokens
from llmpipe.windows import inputs_and_targets, sliding_windows

MAX_LENGTH, STRIDE = 4, 3


@pytest.fixture
def token_file(tmp_path):
    """53 raw uint16 ids, many above 2**15 so a signed conversion would show."""
    path = tmp_path / "train.bin"
    np.random.default_rng(1).integers(0, 50257, size=53, dtype=np.uint16).tofile(path)
    return path


@pytest.fixture
def dataset(token_file):
    return TokenWindowDataset(token_file, "uint16", MAX_LENGTH, STRIDE)


def expected_pairs(token_file, max_length=MAX_LENGTH, stride=STRIDE):
    inputs, targets = inputs_and_targets(sliding_windows(np.fromfile(token_file, np.uint16), max_length, stride))
    return inputs.astype(np.int64), targets.astype(np.int64)


def test_items_are_the_windows_as_int64_tensors(dataset, token_file):
    inputs, targets = expected_pairs(token_file)

    assert len(dataset) == len(inputs) == (53 - MAX_LENGTH + STRIDE - 1) // STRIDE
    for i in range(len(dataset)):
        x, y = dataset[i]
        assert x.dtype == y.dtype == torch.int64
        assert x.shape == y.shape == (MAX_LENGTH,)
        assert x.tolist() == inputs[i].tolist()
        assert y.tolist() == targets[i].tolist()
    assert (inputs >= 2**15).any()


def test_a_batch_gathered_at_once_equals_the_items_one_by_one(dataset):
    indices = [7, 0, 12, 3, 3]

    gathered = dataset.__getitems__(indices)

    for (x, y), index in zip(gathered, indices, strict=True):
        assert torch.equal(x, dataset[index][0]) and torch.equal(y, dataset[index][1])


def test_pickling_drops_the_memmap_and_the_copy_reopens_it(dataset, token_file):
    dataset[0]  # opens the memmap
    assert dataset._windows is not None and dataset._tokens is not None

    clone = pickle.loads(pickle.dumps(dataset))

    assert clone._windows is None and clone._tokens is None
    assert dataset._windows is not None
    assert len(clone) == len(dataset)
    for i in range(len(dataset)):
        assert all(torch.equal(a, b) for a, b in zip(clone[i], dataset[i], strict=True))
    assert clone._windows is not None


def test_pickled_dataset_does_not_carry_the_token_bytes(tmp_path):
    path = tmp_path / "train.bin"
    np.zeros(100_000, dtype=np.uint16).tofile(path)
    dataset = TokenWindowDataset(path, "uint16", MAX_LENGTH, STRIDE)
    dataset[0]

    assert len(pickle.dumps(dataset)) < 10_000


def fail_if_the_memmap_came_along(worker_id: int) -> None:
    dataset = torch.utils.data.get_worker_info().dataset
    if dataset._tokens is not None or dataset._windows is not None:
        raise AssertionError(f"worker {worker_id} was handed an open memmap")


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_two_workers_open_the_tokens_lazily_and_yield_the_same_batches(dataset, context):
    def batches(num_workers):
        loader = DataLoader(
            dataset,
            batch_size=3,
            shuffle=False,
            num_workers=num_workers,
            worker_init_fn=fail_if_the_memmap_came_along if num_workers else None,
            multiprocessing_context=context if num_workers else None,
        )
        return [(x.tolist(), y.tolist()) for x, y in loader]

    assert dataset._tokens is None  # constructing it does not keep the file open
    with_workers = batches(2)  # first, so not even a forked worker inherits an open memmap

    assert with_workers == batches(0)
    assert len(with_workers) == -(-len(dataset) // 3)


def test_create_dataloader_batches_equal_a_plain_dataloaders(tmp_path, token_file):
    dataset = TokenWindowDataset(token_file, "uint16", MAX_LENGTH, STRIDE)
    plain = DataLoader(dataset, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(5))
    fast = DataLoader(
        dataset, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(5), collate_fn=collate_windows
    )

    for (x1, y1), (x2, y2) in zip(plain, fast, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


@pytest.fixture(scope="module")
def chain_windows(chain):
    tokens, _ = load_tokens(chain / "data" / "tokens")
    inputs, targets = inputs_and_targets(sliding_windows(tokens, CHAIN_WINDOW["max_length"], CHAIN_WINDOW["stride"]))
    return inputs.astype(np.int64), targets.astype(np.int64)


def test_dataset_stage_records_geometry_and_loader_settings(chain, chain_windows):
    config = json.loads((chain / "data" / "dataset" / "dataset.json").read_text())
    num_windows = len(chain_windows[0])
    tokens, _ = load_tokens(chain / "data" / "tokens")

    assert config["format"] == FORMAT
    assert config["splits"]["train"] == {
        "file": "train.bin",
        "num_tokens": len(tokens),
        "num_windows": num_windows,
        "sha256": ids_sha256(tokens),
    }
    assert config["splits"]["val"] == {"file": "val.bin", "num_tokens": 0, "num_windows": 0, "sha256": ids_sha256([])}
    assert {key: config[key] for key in CHAIN_WINDOW} == CHAIN_WINDOW
    assert {key: config[key] for key in CHAIN_DATASET} == CHAIN_DATASET
    train = np.fromfile(chain / "data" / "dataset" / "train.bin", np.dtype(config["dtype"]))
    assert np.array_equal(train, tokens) and train.dtype == tokens.dtype
    assert (chain / "data" / "dataset" / "val.bin").read_bytes() == b""
    metrics = json.loads((chain / "metrics" / "dataset.json").read_text())
    assert metrics["num_batches"] == num_windows // CHAIN_DATASET["batch_size"]
    assert json.loads(metrics["batch_input_shape"]) == [CHAIN_DATASET["batch_size"], CHAIN_WINDOW["max_length"]]
    with pytest.raises(PipelineError, match="no val windows"):
        load_dataset(chain / "data" / "dataset", "val")


def test_val_fraction_splits_by_token_position_and_windows_each_side_alone(chain, tmp_path):
    project = copy_project(chain, tmp_path / "project")
    set_params(project, {"dataset": {"val_fraction": 0.25}})

    result = run_stage("dataset", project)

    assert result.returncode == 0, result.stderr
    tokens, _ = load_tokens(project / "data" / "tokens")
    num_train = int(0.75 * len(tokens))
    dataset_dir = project / "data" / "dataset"
    assert np.array_equal(np.fromfile(dataset_dir / "train.bin", np.uint16), tokens[:num_train])
    assert np.array_equal(np.fromfile(dataset_dir / "val.bin", np.uint16), tokens[num_train:])
    max_length, stride = CHAIN_WINDOW["max_length"], CHAIN_WINDOW["stride"]
    for split, part in (("train", tokens[:num_train]), ("val", tokens[num_train:])):
        dataset = load_dataset(dataset_dir, split)
        inputs, targets = inputs_and_targets(sliding_windows(part, max_length, stride))
        assert len(dataset) == len(inputs)
        assert dataset[len(dataset) - 1][1].tolist() == targets[-1].tolist()  # no window crosses the split
    val_loader = create_dataloader(dataset_dir, "val")
    val_inputs = torch.cat([x for x, _ in val_loader])
    assert (
        val_inputs.tolist() == inputs_and_targets(sliding_windows(tokens[num_train:], max_length, stride))[0].tolist()
    )
    metrics = json.loads((project / "metrics" / "dataset.json").read_text())
    assert metrics["val_num_windows"] == len(val_inputs)


def test_dataloader_gives_full_batches_of_batch_size_by_max_length(chain, chain_windows):
    loader = create_dataloader(chain / "data" / "dataset")
    batch_size, max_length = CHAIN_DATASET["batch_size"], CHAIN_WINDOW["max_length"]

    batches = list(loader)

    assert len(loader) == len(batches) == len(chain_windows[0]) // batch_size
    assert len(chain_windows[0]) % batch_size != 0, "the chain should have a partial last batch to drop"
    for x, y in batches:
        assert x.shape == y.shape == (batch_size, max_length)
        assert x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])


def test_unshuffled_dataloader_gives_the_windows_in_order(chain, chain_windows):
    loader = create_dataloader(chain / "data" / "dataset", shuffle=False)
    inputs, targets = chain_windows

    x = torch.cat([batch[0] for batch in loader])
    y = torch.cat([batch[1] for batch in loader])

    assert x.tolist() == inputs[: len(x)].tolist()
    assert y.tolist() == targets[: len(y)].tolist()


def epoch_inputs(dataset_dir, **overrides) -> list[list[int]]:
    return torch.cat([x for x, _ in create_dataloader(dataset_dir, **overrides)]).tolist()


def test_seeded_shuffle_repeats_and_another_seed_changes_it(chain, chain_windows):
    dataset_dir = chain / "data" / "dataset"

    first = epoch_inputs(dataset_dir)
    second = epoch_inputs(dataset_dir)
    same_seed = epoch_inputs(dataset_dir, seed=CHAIN_DATASET["seed"])
    other_seed = epoch_inputs(dataset_dir, seed=CHAIN_DATASET["seed"] + 1)

    assert first == second == same_seed
    assert other_seed != first
    in_order = chain_windows[0][: len(first)].tolist()
    assert first != in_order
    all_windows = {tuple(row) for row in chain_windows[0].tolist()}
    assert {tuple(row) for row in first} <= all_windows


def test_load_dataset_returns_the_dataset_with_its_settings(chain, chain_windows):
    dataset = load_dataset(chain / "data" / "dataset")

    assert len(dataset) == dataset.config["splits"]["train"]["num_windows"] == len(chain_windows[0])
    assert dataset.vocab_size == dataset.config["vocab_size"] == 256 + 14 + 1  # tiny BPE plus end-of-text
    assert dataset[5][0].tolist() == chain_windows[0][5].tolist()


def rewrite_json(path, **changes):
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_load_dataset_rejects_another_format(chain, tmp_path):
    dataset_dir = copy_project(chain / "data" / "dataset", tmp_path / "dataset")
    rewrite_json(dataset_dir / "dataset.json", format="ch2-token-windows/0")

    with pytest.raises(PipelineError, match=f"is not in format {FORMAT}"):
        load_dataset(dataset_dir)


def test_load_dataset_rejects_a_missing_dataset_json_saying_where_it_looked(chain, tmp_path):
    dataset_dir = copy_project(chain / "data" / "dataset", tmp_path / "dataset")
    (dataset_dir / "dataset.json").unlink()

    with pytest.raises(PipelineError, match="not found: pass the dataset folder") as error:
        load_dataset(dataset_dir)
    assert str(dataset_dir.absolute() / "dataset.json") in str(error.value)


@pytest.mark.parametrize("content", ["half", "one-byte-more", "empty"])
def test_load_dataset_rejects_a_token_file_that_does_not_match_dataset_json(chain, tmp_path, content):
    dataset_dir = copy_project(chain / "data" / "dataset", tmp_path / "dataset")
    original = (dataset_dir / "train.bin").read_bytes()
    replacement = {"half": original[: len(original) // 2], "one-byte-more": original + b"x", "empty": b""}[content]
    (dataset_dir / "train.bin").write_bytes(replacement)

    with pytest.raises(PipelineError, match="as dataset.json records: run `dvc checkout`"):
        load_dataset(dataset_dir)


def test_batch_size_above_the_window_count_is_one_error_line(chain, tmp_path):
    project = copy_project(chain, tmp_path / "project")
    num_windows = json.loads((project / "data" / "windows" / "windows.json").read_text())["num_windows"]
    set_params(project, {"dataset": {"batch_size": num_windows + 1}})
    before = snapshot(project, "data/dataset", "metrics/dataset.json")

    result = run_stage("dataset", project)

    assert_one_line_error(result, f"dataset.batch_size {num_windows + 1} exceeds the {num_windows} training windows")
    assert snapshot(project, "data/dataset", "metrics/dataset.json") == before
