"""Stage probe: what the token embeddings learned, before (the embed stage's) and after training (train's).

For each of probe.words: its nearest neighbours by cosine among the tokens of the training split, as a table
(PROBE_DIR/neighbours.md); the probe score of both matrices (llmpipe.probe.probe_score: about 0 for random
embeddings, rising as they come to follow the corpus's co-occurrences); and the words' embeddings projected to 2-D
by PCA, before and after, for `dvc plots` (metrics/probe_pca.csv). docs/training.md defines the score.
"""

from pathlib import Path

import pandas as pd

from llmpipe.baselines import token_counts
from llmpipe.cli import run
from llmpipe.data import load_dataset
from llmpipe.errors import PipelineError
from llmpipe.files import output_dir
from llmpipe.formats import (
    EMBEDDINGS_FILE,
    TRAINED_EMBEDDINGS_FILE,
    load_embeddings,
    load_trained_embeddings,
    write_csv,
    write_metrics,
)
from llmpipe.params import load_params, positive_int, word_list
from llmpipe.probe import nearest_among, neighbours_table, pca_rows, probe_score, word_id
from llmpipe.tokenizer import load_encoding

SCHEMA = {"words": word_list, "neighbours": positive_int, "num_tokens": positive_int, "window": positive_int}


def main(dataset_dir: Path, embeddings_dir: Path, model_dir: Path, probe_dir: Path) -> None:
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
    counts = token_counts(dataset.tokens, len(initial))
    ids = [word_id(encoding, word, counts) for word in params["words"]]
    seen = counts.nonzero()[0]
    before, after = (nearest_among(weight, ids, seen, params["neighbours"]) for weight in (initial, trained))
    scores = [
        probe_score(weight, dataset.tokens, params["num_tokens"], params["window"]) for weight in (initial, trained)
    ]
    report = neighbours_table(encoding, ids, before, after, len(seen), scores)
    with output_dir(probe_dir) as tmp:
        (tmp / "neighbours.md").write_text(report, encoding="utf-8")
    rows = pca_rows(params["words"], ids, {"initial": initial, "trained": trained})
    write_csv(Path("metrics/probe_pca.csv"), pd.DataFrame(rows))
    metrics = {"initial_score": round(scores[0], 6), "trained_score": round(scores[1], 6), "num_words": len(ids)}
    write_metrics(Path("metrics/probe.json"), {**metrics, "candidate_tokens": len(seen)})


if __name__ == "__main__":
    run(main)
