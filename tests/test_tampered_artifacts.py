"""Tampered artifacts: a truncated or edited token array or safetensors file fails to load with a clear
error, never silently wrong data; and nothing is ever loaded through pickle."""

from __future__ import annotations

import ast
import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, assert_one_line_error, copy_project, run_stage
from safetensors.torch import save_file

from llmpipe import formats
from llmpipe.data import create_dataloader
from llmpipe.errors import PipelineError
from llmpipe.files import read_json
from llmpipe.formats import (
    EMBEDDING_NAMES,
    EMBEDDINGS_FILE,
    TOKENS_INDEX_FILE,
    load_embeddings,
    load_tokens,
)


@pytest.fixture
def embeddings(chain, tmp_path) -> Path:
    path = tmp_path / EMBEDDINGS_FILE
    shutil.copyfile(chain / "data" / "embeddings" / EMBEDDINGS_FILE, path)
    return path


def header_end(path: Path) -> int:
    """Where a safetensors file's tensor data starts: after the 8-byte length and the JSON header."""
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def test_the_stages_file_loads_and_checks_out(embeddings):
    tensors = load_embeddings(embeddings)
    assert sorted(tensors) == sorted(EMBEDDING_NAMES)


@pytest.mark.parametrize("keep", ["nothing", "7 bytes", "half the header", "the header", "half", "all but 1 byte"])
def test_a_truncated_safetensors_file_is_a_clear_error(embeddings, keep):
    data = embeddings.read_bytes()
    end = header_end(embeddings)
    size = {
        "nothing": 0,
        "7 bytes": 7,
        "half the header": end // 2,
        "the header": end,
        "half": len(data) // 2,
        "all but 1 byte": len(data) - 1,
    }[keep]
    embeddings.write_bytes(data[:size])

    with pytest.raises(PipelineError, match="is not a readable safetensors file.*dvc checkout"):
        load_embeddings(embeddings)


@pytest.mark.parametrize("offset", [0, 1 / 3, 2 / 3, -4])
def test_an_edited_number_is_a_checksum_error(embeddings, offset):
    data = bytearray(embeddings.read_bytes())
    end = header_end(embeddings)
    position = len(data) + offset if offset < 0 else end + int((len(data) - end) * offset)
    data[position] ^= 0x40
    embeddings.write_bytes(bytes(data))

    with pytest.raises(PipelineError, match="does not match its sha256"):
        load_embeddings(embeddings)


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        (b'"F32"', b'"I32"', "not torch.float32"),  # same size, other meaning
        (b'"sample_embeddings":{', b'"sample_embeddingz":{', "holds tensors"),
        (b'"sha256":"{', b'"sha256":"[', "carries no sha256"),
    ],
    ids=["dtype", "name", "checksums"],
)
def test_an_edited_header_is_a_clear_error(embeddings, old, new, fragment):
    data = embeddings.read_bytes()
    assert old in data[: header_end(embeddings)]
    embeddings.write_bytes(data.replace(old, new, 1))

    with pytest.raises(PipelineError, match=fragment):
        load_embeddings(embeddings)


def test_swapped_shapes_are_a_clear_error(embeddings, tmp_path):
    """Shapes edited to other numbers of the same product load in safetensors; the check catches them."""
    tensors = load_embeddings(embeddings)
    tensors["pos_embedding.weight"] = tensors["pos_embedding.weight"].reshape(
        tensors["pos_embedding.weight"].shape[::-1]
    )
    formats.save_tensors(tensors, tmp_path / "reshaped.safetensors")

    with pytest.raises(PipelineError, match="shapes that do not fit together"):
        load_embeddings(tmp_path / "reshaped.safetensors")


def test_a_file_without_checksums_is_not_taken_for_the_stages(embeddings, tmp_path):
    tensors = load_embeddings(embeddings)
    save_file(tensors, tmp_path / "foreign.safetensors")

    with pytest.raises(PipelineError, match="carries no sha256"):
        load_embeddings(tmp_path / "foreign.safetensors")


def test_a_missing_file_says_to_rebuild(tmp_path):
    with pytest.raises(PipelineError, match="not found: run `dvc checkout data/embeddings`"):
        load_embeddings(tmp_path / "absent.safetensors")


# The token array


@pytest.fixture
def tokens_dir(chain, tmp_path) -> Path:
    return Path(shutil.copytree(chain / "data" / "tokens", tmp_path / "tokens"))


SHARD = "tokens-00000.bin"


@pytest.mark.parametrize("keep", [0, 1, 64, -1])
def test_a_truncated_token_shard_is_a_clear_error(tokens_dir, keep):
    path = tokens_dir / SHARD
    path.write_bytes(path.read_bytes()[:keep])

    with pytest.raises(PipelineError, match="dvc checkout|dvc repro"):
        load_tokens(tokens_dir)


@pytest.mark.parametrize("dtype", ["int16", "uint32", "object", "<U2", 7])
def test_an_edited_dtype_in_the_index_is_a_clear_error(tokens_dir, dtype):
    index = json.loads((tokens_dir / TOKENS_INDEX_FILE).read_text())
    (tokens_dir / TOKENS_INDEX_FILE).write_text(json.dumps({**index, "dtype": dtype}))

    with pytest.raises(PipelineError, match="dvc checkout|dvc repro"):
        load_tokens(tokens_dir)


def test_a_shard_named_outside_its_folder_is_refused(tokens_dir):
    index = json.loads((tokens_dir / TOKENS_INDEX_FILE).read_text())
    index["shards"][0]["file"] = "../../etc/passwd"
    (tokens_dir / TOKENS_INDEX_FILE).write_text(json.dumps(index))

    with pytest.raises(PipelineError, match="does not hold"):
        load_tokens(tokens_dir)


# No pickle anywhere


def imports_and_calls(source: str) -> list[tuple[str, dict[str, str]]]:
    """Each name a module imports, and each function it calls with the text of its keyword arguments."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, {}) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found += [(f"{node.module}.{alias.name}", {}) for alias in node.names]
        elif isinstance(node, ast.Call):
            found.append((ast.unparse(node.func), {k.arg: ast.unparse(k.value) for k in node.keywords}))
    return found


@pytest.mark.parametrize(
    "script", sorted([*(ROOT / "stages").glob("*.py"), *(ROOT / "llmpipe").glob("*.py")]), ids=lambda p: p.name
)
def test_no_module_can_load_through_pickle(script):
    for name, keywords in imports_and_calls(script.read_text()):
        assert not any(word in name for word in ("pickle", "torch.load", "joblib", "dill", "shelve")), name
        assert keywords.get("allow_pickle", "False") == "False", (name, keywords)
        assert keywords.get("weights_only", "True") == "True", (name, keywords)


def test_every_artifact_loads_with_pickle_switched_off(chain, monkeypatch):
    def unpickle(*args, **kwargs):
        raise AssertionError("something was unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, unpickle)
    monkeypatch.setattr(torch, "load", unpickle)
    tokens, _ = load_tokens(chain / "data" / "tokens")
    assert len(tokens) > 0
    inputs, targets = next(iter(create_dataloader(chain / "data" / "dataset")))
    assert inputs.shape == targets.shape
    assert set(load_embeddings(chain / "data" / "embeddings" / EMBEDDINGS_FILE)) == set(EMBEDDING_NAMES)


# Edited sidecars and out-of-range ids reach the stages that read them


def tampered_copy(chain: Path, tmp_path: Path, relative: str, edit) -> Path:
    """A copy of the built project with the file at `relative` passed through `edit` (bytes -> bytes)."""
    project = copy_project(chain, tmp_path / "project")
    path = project / relative
    path.write_bytes(edit(path.read_bytes()))
    return project


def drop_field(field: str):
    return lambda data: json.dumps({k: v for k, v in json.loads(data).items() if k != field}).encode()


def set_field(field: str, value):
    return lambda data: json.dumps({**json.loads(data), field: value}).encode()


@pytest.mark.parametrize(
    "edit",
    [drop_field("vocab_size"), set_field("max_length", "6"), set_field("vocab_size", True), lambda data: b"[1, 2]"],
    ids=["no-vocab-size", "max-length-text", "vocab-size-bool", "not-an-object"],
)
def test_embed_on_an_edited_dataset_json_is_one_error_line(chain, tmp_path, edit):
    project = tampered_copy(chain, tmp_path, "data/dataset/dataset.json", edit)

    assert_one_line_error(run_stage("embed", project), "dataset.json", "dvc checkout")


def test_embed_on_a_token_id_outside_the_vocabulary_is_one_error_line(chain, tmp_path):
    """An edited id that would index past the embedding matrix: found before the lookup, not as an IndexError."""
    config = json.loads((chain / "data/dataset/dataset.json").read_text())
    dtype = np.dtype(config["dtype"])
    split_file = config["splits"]["train"]["file"]  # raw ids, no header

    def first_id_too_big(data: bytes) -> bytes:
        return np.array([config["vocab_size"]], dtype).tobytes() + data[dtype.itemsize :]

    project = tampered_copy(chain, tmp_path, f"data/dataset/{split_file}", first_id_too_big)

    # embed's own check, or the dataset loader's checksum once it has one: either way one line.
    assert_one_line_error(run_stage("embed", project), "dvc checkout")


@pytest.mark.parametrize(
    ("fields", "content", "fragment"),
    [
        ({"n": int}, "{}", "'n' is missing or not int"),
        ({"n": int}, '{"n": true}', "'n' is missing or not int"),
        ({"n": int}, '{"n": "4"}', "'n' is missing or not int"),
        ({"f": (int, float)}, '{"f": null}', "'f' is missing or not int or float"),
        ({"n": int}, "[1]", "'n' is missing"),
        ({"n": int}, "[" * 100_000, "is corrupt"),
    ],
)
def test_read_json_with_fields_rejects_an_edited_sidecar(tmp_path, fields, content, fragment):
    path = tmp_path / "meta.json"
    path.write_text(content)

    with pytest.raises(PipelineError, match=re.escape(fragment)):
        read_json(path, fields)


def test_read_json_with_fields_returns_the_object(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text('{"n": 4, "f": 0.5, "extra": [1]}')

    assert read_json(path, {"n": int, "f": (int, float)}) == {"n": 4, "f": 0.5, "extra": [1]}


def test_an_edited_token_stops_the_dataset_stage_in_one_line(chain, tmp_path):
    project = copy_project(chain, tmp_path / "project")
    path = project / "data" / "tokens" / SHARD
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    before = {p.name: p.read_bytes() for p in (project / "data" / "dataset").iterdir()}

    assert_one_line_error(run_stage("dataset", project), SHARD, "was edited or corrupted", "dvc checkout")
    assert {p.name: p.read_bytes() for p in (project / "data" / "dataset").iterdir()} == before


def test_embed_on_a_dataset_json_without_its_splits_is_one_error_line(chain, tmp_path):
    project = tampered_copy(chain, tmp_path, "data/dataset/dataset.json", drop_field("splits"))

    assert_one_line_error(run_stage("embed", project), "dataset.json", "dvc checkout")


def test_dataset_on_an_edited_windows_json_is_one_error_line(chain, tmp_path):
    project = tampered_copy(chain, tmp_path, "data/windows/windows.json", set_field("max_length", "6"))

    assert_one_line_error(run_stage("dataset", project), "windows.json", "dvc checkout")
