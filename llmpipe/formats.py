"""The one owner of the pipeline's on-disk formats: what each file holds, how it is written, opened and checked.

data/tokens/      tokens-NNNNN.bin  the corpus as one array of ids in shards (raw uint16, or uint32 past 65,536
                               ids: nanoGPT's layout); each shard is a run of whole corpus files
                  index.json   format, encoding, vocab_size, eot_token, dtype, num_tokens, each shard's file,
                               num_tokens and sha256, and each corpus file's shard, start and documents
data/windows/     windows.json window geometry: max_length, stride, num_windows, num_tokens
                  preview.csv  the first windows, ids and decoded text
data/dataset/     train.bin    the training ids, raw (nanoGPT's layout), in the dtype dataset.json names
                  val.bin      the validation ids, the same way
                  dataset.json FORMAT, dtype, encoding, vocab_size, max_length, stride, loader settings, and per
                               split its file, num_tokens, num_windows and sha256
data/embeddings/  embeddings.safetensors  float32 tensors with the sha256 of each in the file's metadata
metrics/*.json    scalar metrics; lists written as their JSON text ("[8, 4]") since DVC shows only scalars
metrics/*.csv     tables for `dvc plots`

Every writer here is atomic (llmpipe.files); every reader checks sizes and fields, and says how to fix a
file that fails them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llmpipe.errors import PipelineError, one_line, shown
from llmpipe.files import RESTORE, read_json, require_fields, write_file_atomic, write_json

# Tokens

TOKENS_INDEX_FILE = "index.json"
TOKENS_FORMAT = "llmpipe-tokens/1"
TOKENS_INDEX_FIELDS = {
    "format": str,
    "encoding": str,
    "vocab_size": int,
    "eot_token": int,
    "dtype": str,
    "num_tokens": int,
    "shards": list,
    "files": list,
}
SHARD_FIELDS = {"file": str, "num_tokens": int, "sha256": str}
NUM_HEAD_IDS = 20  # the first ids, as the book prints them
READ_CHUNK = 1 << 22  # ids read, hashed or copied at a time (8 MiB of uint16): memory stays flat at any corpus size


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 as nanoGPT stores GPT-2 ids; uint32 when the vocabulary does not fit."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def shard_name(index: int) -> str:
    """The file name of token shard `index`."""
    return f"tokens-{index:05d}.bin"


def id_bytes(ids: np.ndarray, chunk: int = READ_CHUNK) -> Iterator[bytes]:
    """A token array's bytes a slice at a time."""
    for start in range(0, len(ids), chunk):
        yield ids[start : start + chunk].tobytes()


def ids_sha256(ids: np.ndarray) -> str:
    """The sha256 of the ids' bytes, as recorded beside every token file."""
    digest = hashlib.sha256()
    for data in id_bytes(ids):
        digest.update(data)
    return digest.hexdigest()


class ShardWriter:
    """One token shard (raw ids, nanoGPT's layout), appended piece by piece, hashed as it is written.

    The shard is written under a temporary name and renamed into place by close(), so a task that is
    killed and retried (Ray) never leaves a partial shard under the final name. Use it as a context manager.
    """

    def __init__(self, path: Path, dtype: np.dtype):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.num_tokens = 0
        self.head: list[int] = []
        self.sha256 = hashlib.sha256()
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.file = open(self.tmp, "wb")

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)

    def append(self, ids: np.ndarray) -> None:
        """Append `ids` (cast to the shard's dtype)."""
        data = ids.astype(self.dtype, copy=False).tobytes()
        self.file.write(data)
        self.sha256.update(data)
        self.num_tokens += len(ids)
        if len(self.head) < NUM_HEAD_IDS:
            self.head += ids[: NUM_HEAD_IDS - len(self.head)].tolist()

    def close(self) -> dict[str, Any]:
        """Rename the shard into place; return its index entry: file, num_tokens, sha256."""
        self.file.close()
        os.replace(self.tmp, self.path)
        return {"file": self.path.name, "num_tokens": self.num_tokens, "sha256": self.sha256.hexdigest()}


def write_token_index(
    tokens_dir: Path, encoding: str, vocab_size: int, eot_token: int, shards: list[dict], files: list[dict]
) -> dict[str, Any]:
    """index.json: the encoding, the shards in order (file, num_tokens, sha256) and each corpus file's place
    (file, shard, start in the whole array, num_tokens, num_documents). Returns what it holds."""
    index = {
        "format": TOKENS_FORMAT,
        "encoding": encoding,
        "vocab_size": vocab_size,
        "eot_token": eot_token,
        "dtype": token_dtype(vocab_size).name,
        "num_tokens": sum(shard["num_tokens"] for shard in shards),
        "shards": shards,
        "files": files,
    }
    write_json(Path(tokens_dir) / TOKENS_INDEX_FILE, index)
    return index


class TokenArray:
    """The shards of a tokens folder as one read-only array of ids, never concatenated in memory.

    len(), tokens[i], tokens[a:b] (an ndarray, a copy only when the slice spans shards), np.asarray(tokens)
    (the whole array, for small corpora and tests), and chunks(): the ids a bounded piece at a time, read
    with plain file reads so that a pass over a 10 GB corpus keeps its memory flat.
    """

    def __init__(self, paths: list[Path], counts: list[int], dtype: np.dtype):
        self.paths, self.counts, self.dtype = paths, counts, np.dtype(dtype)
        self.offsets = np.cumsum([0, *counts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _shard(self, k: int) -> np.ndarray:
        if self.counts[k] == 0:
            return np.empty(0, self.dtype)
        return np.memmap(self.paths[k], self.dtype, mode="r", shape=(self.counts[k],))

    def __getitem__(self, key: int | slice) -> np.ndarray | int:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            parts = list(self.chunks(start, max(start, stop)))
            ids = parts[0] if len(parts) == 1 else np.concatenate([np.empty(0, self.dtype), *parts])
            return ids[::step]
        position = key + len(self) if key < 0 else key
        if not 0 <= position < len(self):
            raise IndexError(f"token {key} of {len(self)}")
        k = int(np.searchsorted(self.offsets, position, side="right")) - 1
        return int(self._shard(k)[position - self.offsets[k]])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        ids = self[:]
        return ids if dtype is None else ids.astype(dtype)

    def tolist(self) -> list[int]:
        return self[:].tolist()

    def chunks(self, start: int = 0, stop: int | None = None, size: int = READ_CHUNK) -> Iterator[np.ndarray]:
        """The ids in [start, stop) as arrays of at most `size`, none spanning two shards."""
        stop = len(self) if stop is None else stop
        for k, path in enumerate(self.paths):
            first, last = max(start, int(self.offsets[k])), min(stop, int(self.offsets[k + 1]))
            for offset in range(first, last, size):
                count = min(size, last - offset)
                position = (offset - int(self.offsets[k])) * self.dtype.itemsize
                yield np.fromfile(path, self.dtype, count=count, offset=position)


def load_tokens(tokens_dir: Path, *, verify: bool = False) -> tuple[TokenArray, dict]:
    """The token shards in `tokens_dir` as one TokenArray, and index.json, both checked.

    Opening is cheap: the index's fields and each shard's size are checked. With verify=True each shard's
    sha256 too (one read of every shard). Raises PipelineError naming the file that fails and the fix.
    """
    tokens_dir = Path(tokens_dir)
    where = tokens_dir / TOKENS_INDEX_FILE
    index = read_json(where, TOKENS_INDEX_FIELDS)
    if index["format"] != TOKENS_FORMAT:
        raise PipelineError(f"{where} is not in format {TOKENS_FORMAT}: run `dvc repro -f tokenize`")
    try:
        dtype = np.dtype(index["dtype"])
    except TypeError:
        dtype = None
    if dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)):
        raise PipelineError(f"{where}: dtype {shown(index['dtype'])} is not uint16 or uint32: {RESTORE}")
    shards = [require_fields(shard, SHARD_FIELDS, where) for shard in index["shards"]]
    paths = [tokens_dir / shard["file"] for shard in shards]
    for path, shard in zip(paths, shards, strict=True):
        size = path.stat().st_size if path.is_file() else None
        if path.parent != tokens_dir or shard["num_tokens"] < 0 or size != shard["num_tokens"] * dtype.itemsize:
            raise PipelineError(f"{path} does not hold the {shard['num_tokens']} ids {where} records: {RESTORE}")
    tokens = TokenArray(paths, [shard["num_tokens"] for shard in shards], dtype)
    if len(tokens) != index["num_tokens"]:
        raise PipelineError(f"{where} counts {index['num_tokens']} ids but its shards hold {len(tokens)}: {RESTORE}")
    if verify:
        for k, (path, shard) in enumerate(zip(paths, shards, strict=True)):
            digest = hashlib.sha256()
            for ids in tokens.chunks(int(tokens.offsets[k]), int(tokens.offsets[k + 1])):
                digest.update(ids.tobytes())
            if digest.hexdigest() != shard["sha256"]:
                raise PipelineError(f"{path} was edited or corrupted (its sha256 differs): run `dvc checkout`")
    return tokens, index


# Windows

WINDOWS_FILE = "windows.json"
PREVIEW_FILE = "preview.csv"
WINDOWS_FIELDS = {"num_tokens": int, "max_length": int, "stride": int, "num_windows": int}


def write_windows(windows_dir: Path, geometry: dict[str, int], preview) -> None:
    """windows.json (the geometry) and preview.csv (a pandas DataFrame) in `windows_dir`."""
    write_json(windows_dir / WINDOWS_FILE, geometry)
    write_csv(windows_dir / PREVIEW_FILE, preview)


def read_windows(windows_dir: Path) -> dict[str, int]:
    """The window geometry recorded in `windows_dir`, its fields checked."""
    return read_json(Path(windows_dir) / WINDOWS_FILE, WINDOWS_FIELDS)


# Dataset

DATASET_FILE = "dataset.json"
DATASET_FORMAT = "ch2-token-windows/2"
SPLITS = ("train", "val")
DATASET_FIELDS = {
    "splits": dict,
    "dtype": str,
    "encoding": str,
    "vocab_size": int,
    "max_length": int,
    "stride": int,
    "batch_size": int,
    "shuffle": bool,
    "seed": int,
    "val_fraction": (float, int),
}
SPLIT_FIELDS = {"file": str, "num_tokens": int, "num_windows": int, "sha256": str}
INT64_MAX = int(np.iinfo(np.int64).max)  # numpy and torch take every count, length and seed as a 64-bit integer


def write_split(chunks: Iterable[np.ndarray], path: Path) -> str:
    """Write the ids of `chunks` to `path` as raw ids; return their sha256, taken in the same pass."""
    digest = hashlib.sha256()
    with open(path, "wb") as file:
        for ids in chunks:
            data = ids.tobytes()
            file.write(data)
            digest.update(data)
    return digest.hexdigest()


def write_dataset(dataset_dir: Path, tokens: TokenArray, splits: dict[str, dict], config: dict[str, Any]) -> dict:
    """The dataset folder: each split's ids (consecutive slices of `tokens`, sized as `splits` says) as raw
    files, and dataset.json holding `config`, the splits with each file's sha256, and the format tag.

    Returns what dataset.json holds.
    """
    start = 0
    for split in SPLITS:
        end = start + splits[split]["num_tokens"]
        path = Path(dataset_dir) / splits[split]["file"]
        splits[split] = {**splits[split], "sha256": write_split(tokens.chunks(start, end), path)}
        start = end
    config = {"format": DATASET_FORMAT, **config, "splits": splits}
    write_json(Path(dataset_dir) / DATASET_FILE, config)
    return config


def read_dataset_config(dataset_dir: Path, *, missing: str) -> dict[str, Any]:
    """dataset.json from `dataset_dir`, its format and every field checked.

    Each field must hold what the dataset stage writes: a positive vocab_size, max_length, stride and batch_size, a
    non-negative seed (all 64-bit), a val_fraction in [0, 1), the dtype of the vocabulary (token_dtype: an edit to
    another dtype of the same size would read other ids), and per split its file (<split>.bin), non-negative
    counts and a sha256. `missing` is the fix the message gives when the file is absent. Raises PipelineError.
    """
    path = Path(dataset_dir) / DATASET_FILE
    fix = "run `dvc checkout` to restore it, or `dvc repro -f dataset`"
    config = read_json(path, missing=missing)
    if not isinstance(config, dict) or config.get("format") != DATASET_FORMAT:
        raise PipelineError(f"{path} is not in format {DATASET_FORMAT}: {fix}")
    require_fields(config, DATASET_FIELDS, path, fix=fix)
    lowest = {key: 1 for key in ("vocab_size", "max_length", "stride", "batch_size")} | {"seed": 0}
    problems = [
        f"{key} {shown(config[key])} is not in [{low}, {INT64_MAX}]"
        for key, low in lowest.items()
        if not low <= config[key] <= INT64_MAX
    ]
    if not 0 <= config["val_fraction"] < 1:
        problems.append(f"val_fraction {shown(config['val_fraction'])} is not in [0, 1)")
    if not problems and config["dtype"] != token_dtype(config["vocab_size"]).name:
        expected = token_dtype(config["vocab_size"]).name
        problems.append(f"dtype {shown(config['dtype'])} is not {expected}, the dtype of its vocabulary")
    for split in SPLITS:
        where = f"{path} ({split})"
        recorded = require_fields(config["splits"].get(split), SPLIT_FIELDS, where, fix=fix)
        if recorded["file"] != f"{split}.bin":
            problems.append(f"the {split} file is {shown(recorded['file'])}, not {split}.bin")
        for key in ("num_tokens", "num_windows"):
            if not 0 <= recorded[key] <= INT64_MAX:
                problems.append(f"the {split} {key} {shown(recorded[key])} is not in [0, {INT64_MAX}]")
        if not is_sha256(recorded["sha256"]):
            problems.append(f"the {split} sha256 {shown(recorded['sha256'])} is not 64 hex digits")
    if problems:
        raise PipelineError(f"{path} is corrupt ({problems[0]}): {fix}")
    return config


def is_sha256(value: str) -> bool:
    """Whether `value` is a sha256 as hexdigest() writes it."""
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def split_path(dataset_dir: Path, config: dict[str, Any], split: str) -> tuple[Path, dict[str, Any]]:
    """The file of `split` and its record in dataset.json, once the file has the recorded size.

    Raises PipelineError for an unknown split, a split with no windows, or a file of the wrong size.
    """
    if split not in SPLITS:
        raise PipelineError(f"split {shown(split)} is unknown: use one of {', '.join(SPLITS)}")
    where = Path(dataset_dir) / DATASET_FILE
    recorded = require_fields(config["splits"].get(split), SPLIT_FIELDS, f"{where} ({split})")
    if recorded["num_windows"] == 0:
        raise PipelineError(f"{dataset_dir} has no {split} windows: set dataset.val_fraction above 0 and rerun")
    path = Path(dataset_dir) / recorded["file"]
    expected_bytes = recorded["num_tokens"] * np.dtype(config["dtype"]).itemsize
    if not path.is_file() or path.stat().st_size != expected_bytes:
        raise PipelineError(
            f"{path} should hold {recorded['num_tokens']} {config['dtype']} ids ({expected_bytes} bytes) "
            f"as {DATASET_FILE} records: run `dvc checkout` to restore it"
        )
    return path, recorded


# Tensors (embeddings, models)

EMBEDDINGS_FILE = "embeddings.safetensors"


def tensor_digests(tensors: dict[str, Any]) -> dict[str, str]:
    """The sha256 of each tensor's bytes, by name: an edited number in the file shows as a mismatch."""
    return {name: hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest() for name, tensor in tensors.items()}


def save_tensors(tensors: dict[str, Any], path: Path) -> None:
    """A safetensors file of `tensors` with the sha256 of each in its metadata, written atomically."""
    from safetensors.torch import save

    # One metadata key: safetensors writes several in a random order, and the file must be byte-identical.
    checksums = json.dumps(tensor_digests(tensors), sort_keys=True)
    data = save({name: t.contiguous() for name, t in tensors.items()}, metadata={"sha256": checksums})
    write_file_atomic(path, data)


def load_tensors(path: Path, names: tuple[str, ...], dtype, *, fix: str) -> dict[str, Any]:
    """The tensors in a file save_tensors wrote, checked: exactly `names`, all of `dtype`, each sha256.

    Raises PipelineError naming the file and ending in `fix` when it is missing, unreadable, foreign or edited.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            checksums = (file.metadata() or {}).get("sha256")
            tensors = {name: file.get_tensor(name) for name in file.keys()}
    except FileNotFoundError:
        raise PipelineError(f"{Path(path).absolute()} not found: {fix}") from None
    except (SafetensorError, OSError) as error:
        raise PipelineError(f"{path} is not a readable safetensors file ({one_line(str(error))}): {fix}") from None
    if sorted(tensors) != sorted(names):
        raise PipelineError(f"{path} holds tensors {sorted(tensors)}, not {list(names)}: {fix}")
    wrong_dtype = [name for name, tensor in tensors.items() if tensor.dtype != dtype]
    if wrong_dtype:
        raise PipelineError(f"{path}: {wrong_dtype[0]} is {tensors[wrong_dtype[0]].dtype}, not {dtype}: {fix}")
    try:
        expected = json.loads(checksums)
    except (TypeError, ValueError):
        expected = None
    if not isinstance(expected, dict):
        raise PipelineError(f"{path} carries no sha256 of its tensors, so it was not written by this project: {fix}")
    changed = [name for name, digest in tensor_digests(tensors).items() if expected.get(name) != digest]
    if changed:
        raise PipelineError(f"{path}: {changed[0]} does not match its sha256, the file was edited or corrupted: {fix}")
    return tensors


EMBEDDING_NAMES = ("token_embedding.weight", "pos_embedding.weight", "sample_embeddings", "input_embeddings")
NUM_SAMPLE_WINDOWS = 2


def load_embeddings(path: Path) -> dict[str, Any]:
    """The embed stage's tensors, checked: the four names, float32, shapes that fit together and each sha256.

    A truncated, edited or foreign file is a PipelineError, never silently wrong numbers.
    """
    import torch

    fix = "run `dvc checkout data/embeddings` or `dvc repro -f embed`"
    tensors = load_tensors(path, EMBEDDING_NAMES, torch.float32, fix=fix)
    token, pos, sample, batch = (tensors[name].shape for name in EMBEDDING_NAMES)
    dim = token[-1]
    fits = (
        (len(token), len(pos), len(sample), len(batch)) == (2, 2, 3, 3)
        and pos[1] == sample[2] == batch[2] == dim
        and sample[0] <= NUM_SAMPLE_WINDOWS
        and sample[1] == batch[1] <= pos[0]
    )
    if not fits:
        shapes = ", ".join(f"{name} {list(tensors[name].shape)}" for name in EMBEDDING_NAMES)
        raise PipelineError(f"{path} has shapes that do not fit together ({shapes}): {fix}")
    return tensors


# Metrics and tables


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    """A metrics JSON file. DVC shows only scalar metrics, so lists (ids, shapes) are written as their JSON
    text, "[8, 4]": `dvc metrics show` prints them and json.loads reads them back."""
    write_json(
        path,
        {key: json.dumps(list(value)) if isinstance(value, list | tuple) else value for key, value in metrics.items()},
    )


def write_csv(path: Path, table) -> None:
    """A pandas DataFrame as CSV (no index, "\\n" line ends), atomically."""
    write_file_atomic(path, table.to_csv(index=False, lineterminator="\n").encode("utf-8"))


# Trained model (the train stage's data/model/)
#
# data/model/  model.safetensors       the GPT's state_dict, float32, each tensor's sha256 in the metadata
#              config.json             MODEL_FORMAT, the GPTConfig fields and the state_dict's tensor names
#              embeddings.safetensors  the trained token and positional embeddings, named as the embed stage's

MODEL_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "config.json"
MODEL_FORMAT = "llmpipe-gpt/1"
MODEL_CONFIG_FIELDS = {
    "vocab_size": int,
    "context_length": int,
    "emb_dim": int,
    "n_heads": int,
    "n_layers": int,
    "drop_rate": (float, int),
    "qkv_bias": bool,
}
TRAINED_EMBEDDINGS_FILE = "embeddings.safetensors"
TRAINED_EMBEDDING_NAMES = ("token_embedding.weight", "pos_embedding.weight")
MODEL_FIX = "run `dvc checkout data/model` or `dvc repro -f train`"


def save_model(model_dir: Path, state_dict: dict[str, Any], config: dict[str, Any]) -> None:
    """model.safetensors (the float32 state_dict, with each tensor's sha256) and config.json (`config`, the
    GPTConfig fields, and the tensor names) in `model_dir`, each written atomically."""
    tensors = {name: tensor.detach().cpu() for name, tensor in state_dict.items()}
    save_tensors(tensors, Path(model_dir) / MODEL_FILE)
    write_json(Path(model_dir) / MODEL_CONFIG_FILE, {"format": MODEL_FORMAT, **config, "tensors": sorted(tensors)})


def load_model(model_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The state_dict and the GPTConfig fields that save_model wrote, checked: the format, each field's type,
    exactly the tensors config.json names, float32, each sha256, and embedding and output shapes that fit the
    config. Build the model with llmpipe.model.load_gpt, which also checks the names against the architecture.

    Raises PipelineError naming the file and the fix.
    """
    import torch

    where = Path(model_dir) / MODEL_CONFIG_FILE
    recorded = read_json(where, {**MODEL_CONFIG_FIELDS, "format": str, "tensors": list}, missing=MODEL_FIX)
    if recorded["format"] != MODEL_FORMAT:
        raise PipelineError(f"{where} is not in format {MODEL_FORMAT}: {MODEL_FIX}")
    names = recorded["tensors"]
    if not names or not all(isinstance(name, str) for name in names):
        raise PipelineError(f"{where} is corrupt ('tensors' is not a list of names): {MODEL_FIX}")
    config = {field: recorded[field] for field in MODEL_CONFIG_FIELDS}
    tensors = load_tensors(Path(model_dir) / MODEL_FILE, tuple(names), torch.float32, fix=MODEL_FIX)
    expected = {
        "tok_emb.weight": [config["vocab_size"], config["emb_dim"]],
        "pos_emb.weight": [config["context_length"], config["emb_dim"]],
        "out_head.weight": [config["vocab_size"], config["emb_dim"]],
    }
    for name, shape in expected.items():
        if name not in tensors or list(tensors[name].shape) != shape:
            found = list(tensors[name].shape) if name in tensors else "missing"
            raise PipelineError(f"{model_dir}: {name} is {found}, not {shape} as {where} says: {MODEL_FIX}")
    return tensors, config


def load_trained_embeddings(path: Path) -> dict[str, Any]:
    """The trained token and positional embeddings that the train stage wrote, checked as load_embeddings checks
    the embed stage's: exactly the two names, float32, 2-D matrices of one width, and each sha256."""
    import torch

    tensors = load_tensors(path, TRAINED_EMBEDDING_NAMES, torch.float32, fix=MODEL_FIX)
    token, pos = (tensors[name].shape for name in TRAINED_EMBEDDING_NAMES)
    if len(token) != 2 or len(pos) != 2 or token[1] != pos[1]:
        raise PipelineError(f"{path} has shapes that do not fit together ({list(token)}, {list(pos)}): {MODEL_FIX}")
    return tensors
