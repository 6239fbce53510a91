"""Stage fetch: the corpus into RAW_DIR, each document proved to be the pinned one (the book's section 2.1)."""

import os
from pathlib import Path

from llmpipe.cli import run
from llmpipe.fetch import MIRROR_ENV, Limits, corpus_metrics, fetch
from llmpipe.formats import write_metrics
from llmpipe.params import (
    FileSource,
    boolean,
    load_params,
    non_negative_int,
    positive_int,
    positive_number,
    sha256_hex,
    source_list,
    text,
)

SCHEMA = {
    "url": text,
    "sha256": sha256_hex,
    "sources": source_list,
    "timeout_seconds": positive_number,
    "max_bytes": positive_int,
    "retries": non_negative_int,
    "deadline_seconds": positive_number,
    "allow_outside_symlinks": boolean,
}


def main(raw_dir: Path) -> None:
    params = load_params("fetch", SCHEMA)
    sources = [FileSource(params["url"], params["sha256"]), *params["sources"]]
    limits = Limits(params["timeout_seconds"], params["max_bytes"], params["retries"], params["deadline_seconds"])
    mirror = os.environ.get(MIRROR_ENV)
    documents = fetch(sources, raw_dir, limits, mirror, allow_outside_symlinks=params["allow_outside_symlinks"])
    write_metrics(Path("metrics/fetch.json"), corpus_metrics(documents))


if __name__ == "__main__":
    run(main)
