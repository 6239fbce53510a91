"""The one owner of the pipeline's on-disk formats: what each file holds, how it is written, opened and checked.

data/tokens/      tokens.npy   the corpus as one flat array of ids (uint16, or uint32 past 65,536 ids), a
                               plain .npy file byte-identical to np.save of the array
                  meta.json    encoding, vocab_size, eot_token, dtype, num_tokens, the ids' sha256, documents
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llmpipe.errors import PipelineError, one_line, shown
from llmpipe.files import RESTORE, read_json, require_fields, write_file_atomic, write_json

# Tokens

TOKENS_FILE = "tokens.npy"
TOKENS_META_FILE = "meta.json"
TOKENS_META_FIELDS = {"dtype": str, "num_tokens": int, "sha256": str, "encoding": str, "vocab_size": int}
NUM_HEAD_IDS = 20  # the first ids, kept by TokenWriter for a preview (the book prints 20)
HASH_CHUNK = 1 << 24  # ids hashed or copied at a time, so a memory-mapped corpus never has to fit in memory


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 as nanoGPT stores GPT-2 ids; uint32 when the vocabulary does not fit."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def id_bytes(ids: np.ndarray, chunk: int = HASH_CHUNK) -> Iterator[bytes]:
    """A token array's bytes a slice at a time."""
    for start in range(0, len(ids), chunk):
        yield ids[start : start + chunk].tobytes()


def ids_sha256(ids: np.ndarray) -> str:
    """The sha256 of the ids' bytes, as recorded beside every token file."""
    digest = hashlib.sha256()
    for data in id_bytes(ids):
        digest.update(data)
    return digest.hexdigest()


class TokenWriter:
    """tokens.npy and meta.json in `tokens_dir`, the ids appended piece by piece so no corpus has to fit in memory.

    The .npy header is written first for length 0 and rewritten with the real length on close; numpy pads
    the header for any length to the same size, so the file is byte-identical to np.save of the array.
    Use it as a context manager; close() finishes both files. `head` holds the first NUM_HEAD_IDS ids.
    """

    def __init__(self, tokens_dir: Path, dtype: np.dtype):
        self.dtype = np.dtype(dtype)
        self.tokens_dir = Path(tokens_dir)
        self.num_tokens = 0
        self.head: list[int] = []
        self.sha256 = hashlib.sha256()
        self.file = open(self.tokens_dir / TOKENS_FILE, "wb")
        self.header_size = self._write_header()

    def __enter__(self) -> TokenWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.file.close()

    def _write_header(self) -> int:
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (self.num_tokens,),
        }
        np.lib.format.write_array_header_1_0(self.file, header)
        return self.file.tell()

    def append(self, ids: np.ndarray) -> None:
        """Append `ids` (cast to the writer's dtype)."""
        data = ids.astype(self.dtype, copy=False).tobytes()
        self.file.write(data)
        self.sha256.update(data)
        self.num_tokens += len(ids)
        if len(self.head) < NUM_HEAD_IDS:
            self.head += ids[: NUM_HEAD_IDS - len(self.head)].tolist()

    def close(self, encoding: str, vocab_size: int, eot_token: int, documents: list[dict[str, Any]]) -> dict[str, Any]:
        """Finish tokens.npy and write meta.json; return what meta.json holds.

        `documents` lists each document's file, start and num_tokens.
        """
        self.file.seek(0)
        if self._write_header() != self.header_size:
            raise RuntimeError("the .npy header changed size")  # numpy's padding makes this impossible
        self.file.close()
        meta = {
            "encoding": encoding,
            "vocab_size": vocab_size,
            "eot_token": eot_token,
            "dtype": self.dtype.name,
            "num_tokens": self.num_tokens,
            "sha256": self.sha256.hexdigest(),
            "documents": documents,
        }
        write_json(self.tokens_dir / TOKENS_META_FILE, meta)
        return meta


def load_tokens(tokens_dir: Path) -> tuple[np.ndarray, dict]:
    """The token array in `tokens_dir`, memory-mapped read-only, and its meta.json, both checked.

    Raises PipelineError when either file is missing, unreadable, the two disagree, or the ids' sha256
    differs from the recorded one.
    """
    tokens_dir = Path(tokens_dir)
    meta = read_json(tokens_dir / TOKENS_META_FILE, TOKENS_META_FIELDS)
    path = tokens_dir / TOKENS_FILE
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise PipelineError(f"{path} is not a readable token array ({one_line(str(error))}): {RESTORE}") from None
    try:
        matches = tokens.ndim == 1 and tokens.dtype == np.dtype(meta["dtype"]) and len(tokens) == meta["num_tokens"]
    except TypeError:
        matches = False
    if not matches:
        raise PipelineError(f"{path} does not match {tokens_dir / TOKENS_META_FILE}: run `dvc repro -f tokenize`")
    if ids_sha256(tokens) != meta["sha256"]:
        raise PipelineError(f"{path} was edited or corrupted (its sha256 differs): run `dvc checkout`")
    return tokens, meta


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
    "vocab_size": int,
    "max_length": int,
    "stride": int,
    "batch_size": int,
    "shuffle": bool,
    "seed": int,
}
SPLIT_FIELDS = {"file": str, "num_tokens": int, "num_windows": int, "sha256": str}


def write_split(ids: np.ndarray, path: Path) -> str:
    """Write the raw ids to `path` with flat memory; return their sha256, taken in the same pass."""
    digest = hashlib.sha256()
    with open(path, "wb") as file:
        for data in id_bytes(ids):
            file.write(data)
            digest.update(data)
    return digest.hexdigest()


def write_dataset(dataset_dir: Path, tokens: np.ndarray, splits: dict[str, dict], config: dict[str, Any]) -> dict:
    """The dataset folder: each split's ids (consecutive slices of `tokens`, sized as `splits` says) as raw
    files, and dataset.json holding `config`, the splits with each file's sha256, and the format tag.

    Returns what dataset.json holds.
    """
    start = 0
    for split in SPLITS:
        end = start + splits[split]["num_tokens"]
        splits[split] = {
            **splits[split],
            "sha256": write_split(tokens[start:end], Path(dataset_dir) / splits[split]["file"]),
        }
        start = end
    config = {"format": DATASET_FORMAT, **config, "splits": splits}
    write_json(Path(dataset_dir) / DATASET_FILE, config)
    return config


def read_dataset_config(dataset_dir: Path, *, missing: str) -> dict[str, Any]:
    """dataset.json from `dataset_dir`, its format and fields checked.

    `missing` is the fix the message gives when the file is absent. Raises PipelineError.
    """
    path = Path(dataset_dir) / DATASET_FILE
    config = read_json(path, missing=missing)
    if not isinstance(config, dict) or config.get("format") != DATASET_FORMAT:
        raise PipelineError(
            f"{path} is not in format {DATASET_FORMAT}: run `dvc checkout` to restore it, or `dvc repro -f dataset`"
        )
    return require_fields(config, DATASET_FIELDS, path)


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
