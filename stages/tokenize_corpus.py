"""Stage tokenize: every document of RAW_DIR as GPT-2 token ids, in one flat array (the book's section 2.5).

Files are encoded in order of their path, with the end-of-text token between documents; memory stays
flat whatever the corpus size. (Named tokenize_corpus.py so that it never shadows Python's tokenize.)
"""

from pathlib import Path

from tqdm import tqdm

from llmpipe.cli import run
from llmpipe.errors import PipelineError
from llmpipe.files import output_dir
from llmpipe.formats import TokenWriter, token_dtype, write_metrics
from llmpipe.params import load_params, one_of, text
from llmpipe.tokenizer import corpus_files, document_spans, load_encoding, read_chunks, tokenize_documents

SCHEMA = {"encoding": text, "literal_endoftext": one_of("text", "token")}


def main(raw_dir: Path, tokens_dir: Path) -> None:
    params = load_params("tokenize", SCHEMA)
    encoding = load_encoding(params["encoding"])
    files = corpus_files(raw_dir)
    with output_dir(tokens_dir) as tmp, TokenWriter(tmp, token_dtype(encoding.n_vocab)) as writer:
        with tqdm(total=sum(f.stat().st_size for f in files), unit="B", unit_scale=True, disable=None) as bar:
            documents = (counted(read_chunks(path), bar) for path in files)
            starts = tokenize_documents(documents, encoding, writer.append, params["literal_endoftext"])
        if writer.num_tokens == 0:
            raise PipelineError(f"the corpus in {raw_dir} encodes to no tokens: use a corpus with text in it")
        spans = document_spans(files, raw_dir, starts, writer.num_tokens)
        meta = writer.close(params["encoding"], encoding.n_vocab, encoding.eot_token, spans)
    metrics = {"num_tokens": meta["num_tokens"], "num_documents": len(files), "vocab_size": encoding.n_vocab}
    write_metrics(Path("metrics/tokenize.json"), {**metrics, "dtype": meta["dtype"], "first_tokens": writer.head})


def counted(chunks, bar):
    """The text chunks, each advancing the progress bar by its size in bytes."""
    for chunk in chunks:
        bar.update(len(chunk.encode("utf-8")))
        yield chunk


if __name__ == "__main__":
    run(main)
