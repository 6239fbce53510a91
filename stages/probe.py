"""Stage probe: what the token embeddings learned, before (the embed stage's) and after training (train's).

For each of probe.words: its nearest neighbours by cosine among the tokens of the training split, as a table
(metrics/probe_neighbours.md); the probe score of both matrices (llmpipe.probe.probe_score: about 0 for random
embeddings, rising as they come to follow the corpus's co-occurrences); and the words' embeddings projected to 2-D
by PCA, before and after, for `dvc plots` (metrics/probe_pca.csv). docs/training.md defines the score.
"""

from pathlib import Path

import pandas as pd

from llmpipe.baselines import token_counts
from llmpipe.cli import run
from llmpipe.data import load_dataset
from llmpipe.errors import PipelineError, shown
from llmpipe.files import write_file_atomic
from llmpipe.formats import (
    EMBEDDINGS_FILE,
    TRAINED_EMBEDDINGS_FILE,
    load_embeddings,
    load_trained_embeddings,
    write_csv,
    write_metrics,
)
from llmpipe.params import load_params, positive_int
from llmpipe.probe import nearest_among, pca_2d, probe_score
from llmpipe.tokenizer import load_encoding


def word_list(key: str, value) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(word, str) and word.strip() for word in value):
        raise PipelineError(f"{key} must be a non-empty list of words, got {shown(value)}: fix it in params.yaml")
    if len(set(value)) != len(value):
        raise PipelineError(f"{key} lists a word twice: list each once")
    return value


SCHEMA = {"words": word_list, "neighbours": positive_int, "num_tokens": positive_int, "window": positive_int}


def main(dataset_dir: Path, embeddings_dir: Path, model_dir: Path) -> None:
    params = load_params("probe", SCHEMA)
    dataset = load_dataset(dataset_dir, "train")
    encoding = load_encoding(dataset.config["encoding"])
    initial = load_embeddings(embeddings_dir / EMBEDDINGS_FILE)["token_embedding.weight"]
    trained = load_trained_embeddings(model_dir / TRAINED_EMBEDDINGS_FILE)["token_embedding.weight"]
    if initial.shape != trained.shape:
        raise PipelineError(
            f"{model_dir} was trained from other embeddings ({list(trained.shape)}) than {embeddings_dir} holds "
            f"({list(initial.shape)}): run `dvc repro`"
        )
    tokens = dataset.tokens
    counts = token_counts(tokens, len(initial))
    ids = [word_id(encoding, word, counts) for word in params["words"]]
    seen = counts.nonzero()[0]
    before = nearest_among(initial, ids, seen, params["neighbours"])
    after = nearest_among(trained, ids, seen, params["neighbours"])
    initial_score = probe_score(initial, tokens, params["num_tokens"], params["window"])
    trained_score = probe_score(trained, tokens, params["num_tokens"], params["window"])

    def shown_token(token: int) -> str:
        return encoding.decode([token]).replace(" ", "␣").replace("|", "\\|").replace("\n", "⏎")

    def cell(pairs: list[tuple[int, float]]) -> str:
        return ", ".join(f"`{shown_token(token)}` {cosine:.2f}" for token, cosine in pairs)

    lines = [
        f"Nearest neighbours by cosine among the {len(seen):,} tokens of the training split (␣ is a space). "
        f"Probe score: {initial_score:.3f} before training, {trained_score:.3f} after.",
        "",
        "| word | before training (embed stage) | after training (train stage) |",
        "|---|---|---|",
        *(f"| `{shown_token(i)}` | {cell(b)} | {cell(a)} |" for i, b, a in zip(ids, before, after, strict=True)),
    ]
    write_file_atomic(Path("metrics/probe_neighbours.md"), ("\n".join(lines) + "\n").encode("utf-8"))
    rows = []
    for name, weight in (("initial", initial), ("trained", trained)):
        points = pca_2d(weight[ids])
        rows += [
            {"word": word.strip(), "embeddings": name, "pc1": round(float(x), 6), "pc2": round(float(y), 6)}
            for word, (x, y) in zip(params["words"], points, strict=True)
        ]
    write_csv(Path("metrics/probe_pca.csv"), pd.DataFrame(rows))
    write_metrics(
        Path("metrics/probe.json"),
        {
            "initial_score": round(initial_score, 6),
            "trained_score": round(trained_score, 6),
            "num_words": len(ids),
            "candidate_tokens": len(seen),
        },
    )


def word_id(encoding, word: str, counts) -> int:
    """The one token id of `word`, which must occur in the training split. Raises PipelineError otherwise."""
    ids = encoding.encode_ordinary(word)
    if len(ids) != 1:
        raise PipelineError(
            f"probe.words {word!r} is {len(ids)} tokens, not one: pick words that are single tokens "
            "(with a leading space, as inside a sentence)"
        )
    if counts[ids[0]] == 0:
        raise PipelineError(f"probe.words {word!r} never occurs in the training split: pick a word of the corpus")
    return ids[0]


if __name__ == "__main__":
    run(main)
