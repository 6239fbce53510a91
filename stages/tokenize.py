"""Stage tokenize: the corpus as one flat array of token ids (the book's section 2.5, BPE with tiktoken).

Every file in data/raw is encoded in name order; between two documents goes the end-of-text token.
Text that happens to spell "<|endoftext|>" is encoded as ordinary text, never as the special token.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

from stages.common import PipelineError, load_params, output_dir, read_json, run, text, write_json, write_metrics

RAW_DIR = Path("data/raw")
OUT_DIR = Path("data/tokens")
TOKENS_FILE = "tokens.npy"
META_FILE = "meta.json"
END_OF_TEXT = "<|endoftext|>"
NUM_FIRST_TOKENS = 20

SCHEMA = {"encoding": text}


def load_encoding(encoding: str):
    """A tiktoken Encoding from a registered name ("gpt2") or the path of a .tiktoken ranks file."""
    import tiktoken

    if encoding.endswith(".tiktoken") or "/" in encoding:
        return _encoding_from_file(Path(encoding))
    if encoding not in tiktoken.list_encoding_names():
        raise PipelineError(
            f"tokenize.encoding {encoding!r} is unknown: use one of {', '.join(tiktoken.list_encoding_names())} "
            "or the path of a .tiktoken file"
        )
    try:
        return tiktoken.get_encoding(encoding)
    except Exception as error:  # tiktoken downloads on a cache miss and raises whatever the network raised
        raise PipelineError(
            f"could not load encoding {encoding!r} ({type(error).__name__}: {error}): "
            "set TIKTOKEN_CACHE_DIR to a folder holding tiktoken's cached files (README: offline use)"
        ) from None


def read_ranks(path: Path) -> dict[bytes, int]:
    """A .tiktoken ranks file: one `base64-token rank` pair a line.

    Read here rather than with tiktoken's loader, which caches files by path and would keep serving
    the old ranks after the file is edited.
    """
    try:
        lines = path.read_bytes().splitlines()
    except OSError as error:
        raise PipelineError(f"tokenize.encoding: cannot read {path} ({error.strerror}): fix the path") from None
    ranks = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise PipelineError(
                f"tokenize.encoding: {path} is not a .tiktoken ranks file (line {number} is not `base64 rank`)"
            ) from None
    if not ranks:
        raise PipelineError(f"tokenize.encoding: {path} holds no ranks")
    return ranks


def _encoding_from_file(path: Path):
    """A GPT-2-style encoding (GPT-2's split pattern, end-of-text after the last rank) from a ranks file."""
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks = read_ranks(path)
    return tiktoken.Encoding(
        name=path.stem,
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={END_OF_TEXT: max(ranks.values()) + 1},
    )


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 as nanoGPT stores GPT-2 ids; uint32 when the vocabulary does not fit."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise PipelineError(
            f"{path} is not UTF-8 text ({error.reason} at byte {error.start}): convert it to UTF-8"
        ) from None


def corpus_files(raw_dir: Path) -> list[Path]:
    files = (
        sorted(p for p in raw_dir.iterdir() if p.is_file() and not p.name.startswith(".")) if raw_dir.is_dir() else []
    )
    if not files:
        raise PipelineError(f"{raw_dir} holds no corpus file: run `dvc repro fetch`")
    return files


def tokenize(texts: list[str], encoding) -> tuple[np.ndarray, list[int]]:
    """Encode each text, end-of-text between them; return the flat ids and where each document starts."""
    dtype = token_dtype(encoding.n_vocab)
    pieces, starts, position = [], [], 0
    for index, document in enumerate(texts):
        if index:
            pieces.append(np.array([encoding.eot_token], dtype=dtype))
            position += 1
        starts.append(position)
        ids = np.array(encoding.encode_ordinary(document), dtype=dtype)
        pieces.append(ids)
        position += len(ids)
    return np.concatenate(pieces) if pieces else np.empty(0, dtype), starts


def load_tokens(tokens_dir: Path = OUT_DIR) -> tuple[np.ndarray, dict]:
    """The token array, memory-mapped read-only, and its metadata."""
    meta = read_json(tokens_dir / META_FILE)
    path = tokens_dir / TOKENS_FILE
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise PipelineError(
            f"{path} is not a readable token array ({error}): run `dvc checkout` or `dvc repro -f`"
        ) from None
    if tokens.ndim != 1 or tokens.dtype != np.dtype(meta["dtype"]) or len(tokens) != meta["num_tokens"]:
        raise PipelineError(f"{path} does not match {tokens_dir / META_FILE}: run `dvc repro -f tokenize`")
    return tokens, meta


def main() -> None:
    params = load_params("tokenize", SCHEMA)
    encoding = load_encoding(params["encoding"])
    files = corpus_files(RAW_DIR)
    tokens, starts = tokenize([read_text(path) for path in files], encoding)
    if len(tokens) == 0:
        raise PipelineError(f"the corpus in {RAW_DIR} encodes to no tokens: use a corpus with text in it")
    meta = {
        "encoding": params["encoding"],
        "vocab_size": encoding.n_vocab,
        "eot_token": encoding.eot_token,
        "dtype": tokens.dtype.name,
        "num_tokens": len(tokens),
        "documents": [
            {"file": path.name, "start": start, "num_tokens": end - start}
            for path, start, end in zip(files, starts, [*(s - 1 for s in starts[1:]), len(tokens)], strict=True)
        ],
    }
    with output_dir(OUT_DIR) as tmp:
        np.save(tmp / TOKENS_FILE, tokens, allow_pickle=False)
        write_json(tmp / META_FILE, meta)
    write_metrics(
        "tokenize",
        {
            "num_tokens": len(tokens),
            "vocab_size": encoding.n_vocab,
            "dtype": tokens.dtype.name,
            "first_tokens": tokens[:NUM_FIRST_TOKENS].tolist(),
        },
    )


if __name__ == "__main__":
    run(main)
