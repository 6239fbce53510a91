"""Stage embed: token and absolute positional embeddings (the book's sections 2.7 and 2.8).

As in the book: seed torch, make the token embedding layer, then the positional one, look up the first
two windows, then add positional embeddings to one batch of token embeddings: the chapter's end point.
data/embeddings/embeddings.safetensors holds the two weight matrices and both results, with the sha256
of each; load it with load_embeddings(), which checks them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from stages.common import (
    PipelineError,
    load_params,
    non_negative_int,
    one_line,
    output_dir,
    positive_int,
    read_json,
    run,
    write_metrics,
)
from stages.dataset import DATASET_FILE, create_dataloader
from stages.dataset import OUT_DIR as DATASET_DIR

OUT_DIR = Path("data/embeddings")
EMBEDDINGS_FILE = "embeddings.safetensors"
NUM_SAMPLE_WINDOWS = 2
TENSOR_NAMES = ("token_embedding.weight", "pos_embedding.weight", "sample_embeddings", "input_embeddings")
DTYPE = torch.float32
# Ample for the book (51 MB) or GPT-2 XL's embedding (0.3 GB); a typo like dim: 2560000 stops here,
# with a message, rather than in the kernel's OOM killer.
MAX_EMBEDDING_BYTES = 4 << 30

SCHEMA = {"dim": positive_int, "context_length": positive_int, "seed": non_negative_int}


def embedding_layers(
    vocab_size: int, context_length: int, dim: int, seed: int
) -> tuple[torch.nn.Embedding, torch.nn.Embedding]:
    """The token and positional embedding layers, initialised from `seed` in the book's order."""
    torch.manual_seed(seed)
    return torch.nn.Embedding(vocab_size, dim), torch.nn.Embedding(context_length, dim)


def input_embeddings(
    input_ids: torch.Tensor, token_embedding: torch.nn.Embedding, pos_embedding: torch.nn.Embedding
) -> torch.Tensor:
    """Token embeddings plus the positional embedding of each position: shape (batch, seq_len, dim)."""
    return token_embedding(input_ids) + pos_embedding(torch.arange(input_ids.shape[-1]))


def check_size(vocab_size: int, context_length: int, dim: int, batch_size: int, max_length: int) -> None:
    """Refuse float32 tensors (both weight matrices, the samples and one batch) over MAX_EMBEDDING_BYTES."""
    rows = vocab_size + context_length + (NUM_SAMPLE_WINDOWS + batch_size) * max_length
    size = rows * dim * DTYPE.itemsize
    if size > MAX_EMBEDDING_BYTES:
        raise PipelineError(
            f"embed.dim {dim} with embed.context_length {context_length} and a vocabulary of {vocab_size} needs "
            f"{size / (1 << 30):,.1f} GiB, over the {MAX_EMBEDDING_BYTES >> 30} GiB limit: "
            "lower embed.dim or embed.context_length"
        )


def check_ids(ids: torch.Tensor, vocab_size: int) -> None:
    """An id past the embedding matrix means an edited dataset: say so rather than fail in the lookup."""
    largest = int(ids.max())
    if largest >= vocab_size:
        raise PipelineError(
            f"{DATASET_DIR} holds token id {largest}, outside its vocabulary of {vocab_size}, so it is corrupt: "
            "run `dvc checkout` or `dvc repro -f dataset`"
        )


def digests(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """The sha256 of each tensor's bytes, by name: an edited number in the file shows as a mismatch."""
    return {name: hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest() for name, tensor in tensors.items()}


def save_embeddings(tensors: dict[str, torch.Tensor], path: Path) -> None:
    # One metadata key: safetensors writes several in a random order, and the file must be byte-identical.
    checksums = json.dumps(digests(tensors), sort_keys=True)
    save_file({name: t.contiguous() for name, t in tensors.items()}, path, metadata={"sha256": checksums})


def load_embeddings(path: str | Path = OUT_DIR / EMBEDDINGS_FILE) -> dict[str, torch.Tensor]:
    """The stage's tensors, checked: the four names, float32, shapes that fit together and each sha256.

    A truncated, edited or foreign file is a PipelineError, never silently wrong numbers.
    """
    fix = "run `dvc checkout data/embeddings` or `dvc repro -f embed`"
    try:
        with safe_open(str(path), framework="pt") as file:
            checksums = (file.metadata() or {}).get("sha256")
            tensors = {name: file.get_tensor(name) for name in file.keys()}
    except FileNotFoundError:
        raise PipelineError(f"{path} not found: run `dvc repro embed`") from None
    except (SafetensorError, OSError) as error:
        raise PipelineError(f"{path} is not a readable safetensors file ({one_line(str(error))}): {fix}") from None
    if sorted(tensors) != sorted(TENSOR_NAMES):
        raise PipelineError(f"{path} holds tensors {sorted(tensors)}, not {list(TENSOR_NAMES)}: {fix}")
    wrong_dtype = [name for name, tensor in tensors.items() if tensor.dtype != DTYPE]
    if wrong_dtype:
        raise PipelineError(f"{path}: {wrong_dtype[0]} is {tensors[wrong_dtype[0]].dtype}, not {DTYPE}: {fix}")
    token, pos, sample, batch = (tensors[name].shape for name in TENSOR_NAMES)
    dim = token[-1]
    fits = (
        (len(token), len(pos), len(sample), len(batch)) == (2, 2, 3, 3)
        and pos[1] == sample[2] == batch[2] == dim
        and sample[0] <= NUM_SAMPLE_WINDOWS
        and sample[1] == batch[1] <= pos[0]
    )
    if not fits:
        shapes = ", ".join(f"{name} {list(tensors[name].shape)}" for name in TENSOR_NAMES)
        raise PipelineError(f"{path} has shapes that do not fit together ({shapes}): {fix}")
    try:
        expected = json.loads(checksums)
    except (TypeError, ValueError):
        expected = None
    if not isinstance(expected, dict):
        raise PipelineError(f"{path} carries no sha256 of its tensors, so it was not written by this stage: {fix}")
    changed = [name for name, digest in digests(tensors).items() if expected.get(name) != digest]
    if changed:
        raise PipelineError(f"{path}: {changed[0]} does not match its sha256, the file was edited or corrupted: {fix}")
    return tensors


def main() -> None:
    params = load_params("embed", SCHEMA)
    config = read_json(DATASET_DIR / DATASET_FILE, {"vocab_size": int, "max_length": int})
    vocab_size, max_length = config["vocab_size"], config["max_length"]
    if params["context_length"] < max_length:
        raise PipelineError(
            f"embed.context_length {params['context_length']} is shorter than window.max_length "
            f"{max_length}: raise embed.context_length to at least {max_length}"
        )
    loader = create_dataloader(DATASET_DIR)
    # The first windows' inputs (fewer when the corpus has fewer windows), and the first batch's.
    sample_ids = torch.from_numpy(loader.dataset.windows[:NUM_SAMPLE_WINDOWS, :-1].astype(np.int64))
    batch_ids, _ = next(iter(loader))
    check_ids(torch.cat([sample_ids.flatten(), batch_ids.flatten()]), vocab_size)
    check_size(vocab_size, params["context_length"], params["dim"], len(batch_ids), max_length)
    token_embedding, pos_embedding = embedding_layers(
        vocab_size, params["context_length"], params["dim"], params["seed"]
    )
    with torch.no_grad():
        sample = token_embedding(sample_ids)
        batch = input_embeddings(batch_ids, token_embedding, pos_embedding)
    tensors = {
        "token_embedding.weight": token_embedding.weight.detach(),
        "pos_embedding.weight": pos_embedding.weight.detach(),
        "sample_embeddings": sample,
        "input_embeddings": batch,
    }
    with output_dir(OUT_DIR) as tmp:
        save_embeddings(tensors, tmp / EMBEDDINGS_FILE)
    write_metrics(
        "embed",
        {
            "token_embedding_shape": list(token_embedding.weight.shape),
            "pos_embedding_shape": list(pos_embedding.weight.shape),
            "sample_embedding_shape": list(sample.shape),
            "input_embedding_shape": list(batch.shape),
        },
    )


if __name__ == "__main__":
    run(main)
