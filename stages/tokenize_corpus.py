"""Stage tokenize: every document of RAW_DIR as GPT-2 token ids, in token shards (the book's section 2.5).

Files are encoded in order of their path, with the end-of-text token between documents; memory stays
flat whatever the corpus size. LLMPIPE_ENGINE=ray runs the encoding as Ray Data tasks (docs/scale.md).
(Named tokenize_corpus.py so that it never shadows Python's tokenize module.)
"""

import os
from pathlib import Path

from tqdm import tqdm

from llmpipe.cli import run
from llmpipe.encode import ENGINE_ENV, tokenize_corpus
from llmpipe.errors import PipelineError
from llmpipe.files import output_dir
from llmpipe.formats import write_metrics
from llmpipe.params import load_params, one_of, text
from llmpipe.tokenizer import corpus_files

SCHEMA = {"encoding": text, "literal_endoftext": one_of("text", "token"), "text_field": text}


def main(raw_dir: Path, tokens_dir: Path) -> None:
    params = load_params("tokenize", SCHEMA)
    files = corpus_files(raw_dir)
    engine = os.environ.get(ENGINE_ENV, "threads")
    with output_dir(tokens_dir) as tmp:
        with tqdm(total=sum(f.stat().st_size for f in files), unit="B", unit_scale=True, disable=None) as bar:
            index = tokenize_corpus(files, raw_dir, tmp, params, engine, on_shard=bar.update)
        if index["num_tokens"] == 0:
            raise PipelineError(f"the corpus in {raw_dir} encodes to no tokens: use a corpus with text in it")
    num_documents = sum(entry["num_documents"] for entry in index["files"])
    metrics = {"num_tokens": index["num_tokens"], "num_documents": num_documents, "num_files": len(files)}
    metrics |= {"num_shards": len(index["shards"]), "vocab_size": index["vocab_size"], "dtype": index["dtype"]}
    write_metrics(Path("metrics/tokenize.json"), {**metrics, "first_tokens": index["head"]})


if __name__ == "__main__":
    run(main)
