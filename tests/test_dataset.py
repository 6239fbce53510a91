"""Stage dataset: a Dataset of (input, target) windows over a memmap, and a seeded DataLoader."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
import yaml
from conftest import assert_one_line_error, run_stage
from pipeline_fixtures import CHAIN_DATASET, CHAIN_WINDOW, built_chain, copy_project, snapshot
from torch.utils.data import DataLoader

from stages.common import PipelineError
from stages.dataset import FORMAT, TokenWindowDataset, create_dataloader, load_dataset
from stages.tokenize import load_tokens
from stages.window import inputs_and_targets, windows

MAX_LENGTH, STRIDE = 4, 3


@pytest.fixture
def token_file(tmp_path):
    """53 uint16 ids, many above 2**15 so a signed conversion would show."""
    path = tmp_path / "tokens.npy"
    np.save(path, np.random.default_rng(1).integers(0, 50257, size=53, dtype=np.uint16), allow_pickle=False)
    return path


@pytest.fixture
def dataset(token_file):
    return TokenWindowDataset(token_file, MAX_LENGTH, STRIDE)


def expected_pairs(token_file, max_length=MAX_LENGTH, stride=STRIDE):
    inputs, targets = inputs_and_targets(windows(np.load(token_file), max_length, stride))
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


def test_pickling_drops_the_memmap_and_the_copy_reopens_it(dataset, token_file):
    dataset[0]  # opens the memmap
    assert dataset._windows is not None

    clone = pickle.loads(pickle.dumps(dataset))

    assert clone._windows is None and clone._tokens is None
    assert dataset._windows is not None
    assert len(clone) == len(dataset)
    for i in range(len(dataset)):
        assert all(torch.equal(a, b) for a, b in zip(clone[i], dataset[i], strict=True))
    assert clone._windows is not None


def test_pickled_dataset_does_not_carry_the_token_bytes(tmp_path):
    path = tmp_path / "tokens.npy"
    np.save(path, np.zeros(100_000, dtype=np.uint16), allow_pickle=False)
    dataset = TokenWindowDataset(path, MAX_LENGTH, STRIDE)
    dataset[0]

    assert len(pickle.dumps(dataset)) < 10_000


def test_two_workers_yield_the_same_batches_as_the_main_process(dataset):
    def batches(num_workers):
        loader = DataLoader(dataset, batch_size=3, shuffle=False, num_workers=num_workers)
        return [(x.tolist(), y.tolist()) for x, y in loader]

    single = batches(0)

    assert batches(2) == single
    assert len(single) == -(-len(dataset) // 3)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return built_chain(tmp_path_factory)


@pytest.fixture(scope="module")
def chain_windows(chain):
    tokens, _ = load_tokens(chain / "data" / "tokens")
    inputs, targets = inputs_and_targets(windows(tokens, CHAIN_WINDOW["max_length"], CHAIN_WINDOW["stride"]))
    return inputs.astype(np.int64), targets.astype(np.int64)


def test_dataset_stage_records_geometry_and_loader_settings(chain, chain_windows):
    config = json.loads((chain / "data" / "dataset" / "dataset.json").read_text())
    num_windows = len(chain_windows[0])

    assert config["format"] == FORMAT
    assert config["num_windows"] == num_windows
    assert {key: config[key] for key in CHAIN_WINDOW} == CHAIN_WINDOW
    assert {key: config[key] for key in CHAIN_DATASET} == CHAIN_DATASET
    assert config["num_batches"] == num_windows // CHAIN_DATASET["batch_size"]
    dataset_tokens = np.load(chain / "data" / "dataset" / "tokens.npy")
    tokens, _ = load_tokens(chain / "data" / "tokens")
    assert np.array_equal(dataset_tokens, tokens) and dataset_tokens.dtype == tokens.dtype
    metrics = json.loads((chain / "metrics" / "dataset.json").read_text())
    assert metrics["num_batches"] == config["num_batches"]
    assert json.loads(metrics["batch_input_shape"]) == [CHAIN_DATASET["batch_size"], CHAIN_WINDOW["max_length"]]


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


def test_load_dataset_returns_the_dataset_and_its_settings(chain, chain_windows):
    dataset, config = load_dataset(chain / "data" / "dataset")

    assert len(dataset) == config["num_windows"] == len(chain_windows[0])
    assert dataset[5][0].tolist() == chain_windows[0][5].tolist()


def rewrite_json(path, **changes):
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_load_dataset_rejects_another_format(chain, tmp_path):
    dataset_dir = copy_project(chain / "data" / "dataset", tmp_path / "dataset")
    rewrite_json(dataset_dir / "dataset.json", format="ch2-token-windows/0")

    with pytest.raises(PipelineError, match="is not in format ch2-token-windows/1"):
        load_dataset(dataset_dir)


def test_load_dataset_rejects_a_missing_dataset_json(chain, tmp_path):
    dataset_dir = copy_project(chain / "data" / "dataset", tmp_path / "dataset")
    (dataset_dir / "dataset.json").unlink()

    with pytest.raises(PipelineError, match="not found"):
        load_dataset(dataset_dir)


@pytest.mark.parametrize("tamper", ["half", "int64"])
def test_load_dataset_rejects_tokens_that_do_not_match_dataset_json(chain, tmp_path, tamper):
    dataset_dir = copy_project(chain / "data" / "dataset", tmp_path / "dataset")
    tokens = np.load(dataset_dir / "tokens.npy")
    tampered = tokens[: len(tokens) // 2] if tamper == "half" else tokens.astype(np.int64)
    np.save(dataset_dir / "tokens.npy", tampered, allow_pickle=False)

    with pytest.raises(PipelineError, match="ids, not the"):
        load_dataset(dataset_dir)


@pytest.mark.parametrize("content", ["garbage", "truncated", "empty"])
def test_load_dataset_rejects_an_unreadable_tokens_file(chain, tmp_path, content):
    dataset_dir = copy_project(chain / "data" / "dataset", tmp_path / "dataset")
    original = (dataset_dir / "tokens.npy").read_bytes()
    replacement = {"garbage": b"not a numpy file", "truncated": original[:200], "empty": b""}[content]
    (dataset_dir / "tokens.npy").write_bytes(replacement)

    with pytest.raises(PipelineError, match="cannot read the tokens"):
        load_dataset(dataset_dir)


def test_load_dataset_rejects_tokens_too_short_for_one_window(chain, tmp_path):
    dataset_dir = copy_project(chain / "data" / "dataset", tmp_path / "dataset")
    np.save(dataset_dir / "tokens.npy", np.arange(CHAIN_WINDOW["max_length"], dtype=np.uint16), allow_pickle=False)

    with pytest.raises(PipelineError, match="max_length"):
        load_dataset(dataset_dir)


def test_batch_size_above_the_window_count_is_one_error_line(chain, tmp_path):
    project = copy_project(chain, tmp_path / "project")
    num_windows = json.loads((project / "data" / "windows" / "windows.json").read_text())["num_windows"]
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["dataset"]["batch_size"] = num_windows + 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = snapshot(project, "data/dataset", "metrics/dataset.json")

    result = run_stage("dataset", project)

    assert_one_line_error(result, f"dataset.batch_size {num_windows + 1} exceeds the {num_windows} windows")
    assert snapshot(project, "data/dataset", "metrics/dataset.json") == before
