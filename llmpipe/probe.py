"""What the token embeddings learned: nearest neighbours, a 2-D map, and one score against co-occurrence.

The score asks whether tokens the model embeds alike are tokens that occur in alike contexts. For the most
frequent tokens, each gets a row of positive pointwise mutual information (PPMI) with the other frequent tokens
within a window around it, the classic counted word vector; probe_score is the Spearman rank correlation, over
all pairs of these tokens, between the cosine of their embeddings and the cosine of their PPMI rows. Random
embeddings score about 0; training on the corpus raises it, as the embeddings come to reflect distribution.

Contexts are restricted to the same frequent tokens: their counts are large enough for PPMI to be reliable
(PPMI overrates rare contexts), and the co-occurrence matrix stays num_tokens x num_tokens however large the
vocabulary. Tokens are read CHUNK at a time, so memory does not grow with the corpus.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from llmpipe.baselines import token_counts
from llmpipe.errors import PipelineError, shown

# Tokens read at a time: 32 MB as int64.
CHUNK = 1 << 22


def as_matrix(weight: torch.Tensor | np.ndarray) -> np.ndarray:
    """A 2-D float64 numpy copy of an embedding matrix given as a torch tensor (on any device) or an array."""
    if isinstance(weight, torch.Tensor):
        weight = weight.detach().cpu().double().numpy()
    return np.asarray(weight, dtype=np.float64)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1; an all-zero row stays zero (its cosine with anything is 0)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1)


def cosine_similarity(vectors: np.ndarray) -> np.ndarray:
    """The [n, n] matrix of cosines between the rows of an [n, dim] array."""
    unit = unit_rows(vectors)
    return unit @ unit.T


def nearest_neighbours(
    weight: torch.Tensor | np.ndarray, query_ids: Sequence[int], k: int
) -> list[list[tuple[int, float]]]:
    """The k rows of `weight` most similar by cosine to each query row, the query itself left out.

    Takes an embedding matrix [vocab_size, emb_dim] (tensor or array), token ids and k. Returns, for each query
    id, k (id, cosine) pairs, most similar first, ties in id order. Raises PipelineError for a query id that is
    not a row of `weight`.
    """
    unit = unit_rows(as_matrix(weight))
    neighbours = []
    for query in query_ids:
        if not 0 <= query < len(unit):
            raise PipelineError(
                f"token id {query} has no embedding: the matrix has {len(unit)} rows, so ask for ids below that"
            )
        similarity = unit @ unit[query]
        similarity[query] = -np.inf  # a token is its own nearest neighbour; leave it out
        nearest = np.argsort(-similarity, kind="stable")[: min(k, len(unit) - 1)]
        neighbours.append([(int(i), float(similarity[i])) for i in nearest])
    return neighbours


def most_frequent_ids(counts: np.ndarray, num_tokens: int) -> np.ndarray:
    """The ids of the `num_tokens` largest counts that are above 0, most frequent first, ties in id order."""
    order = np.argsort(-counts, kind="stable")[:num_tokens]
    return order[counts[order] > 0]


def cooccurrence_counts(tokens: np.ndarray, ids: np.ndarray, window: int) -> np.ndarray:
    """How often each pair of `ids` occurs at most `window` positions apart in `tokens`.

    Takes a token array (any integer dtype, memmaps included), n distinct ids and the window. Returns a
    symmetric int64 [n, n] array: entry (i, j) counts the positions p < q, q - p <= window, holding ids[i] and
    ids[j] in either order (so a pair of equal ids adds 2 to the diagonal). Other tokens are skipped.
    """
    n = len(ids)
    lookup = np.full(int(np.max(ids)) + 1, -1, dtype=np.int64)  # token id -> row, -1 for tokens not in ids
    lookup[ids] = np.arange(n)
    counts = np.zeros(n * n, dtype=np.int64)
    for start in range(0, len(tokens), CHUNK):
        piece = np.asarray(tokens[start : start + CHUNK + window], dtype=np.int64)
        inside = (piece >= 0) & (piece < len(lookup))
        rows = np.where(inside, lookup[np.clip(piece, 0, len(lookup) - 1)], -1)
        for offset in range(1, window + 1):
            # Pairs (p, p + offset) whose first position p lies in this chunk.
            left = rows[: max(0, min(CHUNK, len(rows) - offset))]
            right = rows[offset : offset + len(left)]
            both = (left >= 0) & (right >= 0)
            counts += np.bincount(left[both] * n + right[both], minlength=n * n)
    counts = counts.reshape(n, n)
    return counts + counts.T


def ppmi(counts: np.ndarray) -> np.ndarray:
    """Positive pointwise mutual information of a co-occurrence count matrix.

    Returns max(0, ln(count(i, j) · total / (count(i) · count(j)))) for each cell, with row and column sums as
    count(i) and count(j), and 0 where the count is 0.
    """
    counts = counts.astype(np.float64)
    rows, columns = counts.sum(axis=1, keepdims=True), counts.sum(axis=0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):  # zero counts; masked out below
        pmi = np.log(counts * counts.sum() / (rows * columns))
    return np.where(counts > 0, np.maximum(pmi, 0), 0.0)


def context_similarity(tokens: np.ndarray, ids: np.ndarray, window: int) -> np.ndarray:
    """The [n, n] cosines between the PPMI rows of `ids`, counted within `window` positions in `tokens`.

    Rows and columns are both the given ids (see the module's docstring for why).
    """
    return cosine_similarity(ppmi(cooccurrence_counts(tokens, ids, window)))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    run_starts = np.r_[True, ordered[1:] != ordered[:-1]]  # runs of equal values share a rank
    starts = np.flatnonzero(run_starts)
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = ((starts + ends + 1) / 2)[np.cumsum(run_starts) - 1]
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation of two equal-length arrays: the Pearson correlation of their average ranks.

    Returns a float in [-1, 1]; 0.0 when either array is constant (its ranks say nothing).
    """
    rank_x, rank_y = average_ranks(np.asarray(x)), average_ranks(np.asarray(y))
    rank_x -= rank_x.mean()
    rank_y -= rank_y.mean()
    scale = np.sqrt((rank_x @ rank_x) * (rank_y @ rank_y))
    return float(rank_x @ rank_y / scale) if scale > 0 else 0.0


def probe_score(weight: torch.Tensor | np.ndarray, tokens: np.ndarray, num_tokens: int = 100, window: int = 2) -> float:
    """How well embedding similarity follows context similarity over the most frequent tokens of `tokens`.

    Takes the token embedding matrix [vocab_size, emb_dim], a token array, how many of its most frequent ids to
    compare and the context window. Returns the Spearman correlation, over all pairs i < j of those ids, between
    the cosine of their embeddings and that of their PPMI rows (context_similarity). Raises PipelineError for a
    token id without an embedding row, or fewer than 3 distinct tokens to compare.
    """
    matrix = as_matrix(weight)
    ids = most_frequent_ids(token_counts(tokens, len(matrix)), num_tokens)
    if len(ids) < 3:
        raise PipelineError(
            f"the embedding probe compares pairs of frequent tokens, but found only {len(ids)} distinct tokens "
            f"(needs 3, num_tokens is {num_tokens}): probe a longer token stream or raise num_tokens"
        )
    upper = np.triu_indices(len(ids), k=1)
    embedding = cosine_similarity(matrix[ids])[upper]
    context = context_similarity(tokens, ids, window)[upper]
    return spearman(embedding, context)


def pca_2d(vectors: torch.Tensor | np.ndarray) -> np.ndarray:
    """The rows of `vectors` [n, dim] projected onto their first two principal axes: a float64 [n, 2] array.

    Computed by SVD of the centred rows. An axis's sign is arbitrary, so each is turned to make its largest
    (by absolute value) coordinate positive: the same input gives the same bytes. With fewer than 2 rows or
    columns the missing axis projects to 0.
    """
    centred = as_matrix(vectors)
    centred = centred - centred.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axes = np.zeros((2, centred.shape[1]))
    axes[: len(vt[:2])] = vt[:2]
    signs = np.sign(axes[np.arange(2), np.argmax(np.abs(axes), axis=1)])
    return centred @ (axes * np.where(signs == 0, 1, signs)[:, None]).T


def nearest_among(
    weight: torch.Tensor | np.ndarray, query_ids: Sequence[int], candidate_ids: np.ndarray, k: int
) -> list[list[tuple[int, float]]]:
    """nearest_neighbours restricted to `candidate_ids` (say, the tokens that occur in the training split).

    A token that never occurs gets no gradient, so among all 50,257 rows its neighbours would be noise. Returns,
    for each query id, up to k (id, cosine) pairs among the candidates other than the query, most similar first.
    Raises PipelineError for a query id that is not a candidate.
    """
    candidate_ids = np.asarray(candidate_ids)
    row = {int(token): index for index, token in enumerate(candidate_ids)}
    missing = [query for query in query_ids if query not in row]
    if missing:
        raise PipelineError(f"token id {missing[0]} is not among the {len(candidate_ids)} candidate tokens")
    matrix = as_matrix(weight)[candidate_ids]
    found = nearest_neighbours(matrix, [row[query] for query in query_ids], k)
    return [[(int(candidate_ids[index]), cosine) for index, cosine in pairs] for pairs in found]


def word_id(encoding, word: str, counts: np.ndarray) -> int:
    """The one token id of `word` (a probe word), which must occur in the training split (`counts` by id).

    Raises PipelineError naming probe.words when the word is several tokens or absent from the split.
    """
    ids = encoding.encode_ordinary(word)
    if len(ids) != 1:
        raise PipelineError(
            f"probe.words {shown(word)} is {len(ids)} tokens, not one: pick words that are single tokens "
            "(with a leading space, as inside a sentence)"
        )
    if counts[ids[0]] == 0:
        raise PipelineError(f"probe.words {shown(word)} never occurs in the training split: pick a word of the corpus")
    return ids[0]


def neighbours_table(encoding, ids: list[int], before: list, after: list, num_candidates: int, scores) -> str:
    """The probe's report as Markdown: a line with both probe scores, then a row a word with its nearest
    neighbours (token, cosine) before and after training (␣ stands for a space)."""

    def token(token_id: int) -> str:
        return encoding.decode([token_id]).replace(" ", "␣").replace("|", "\\|").replace("\n", "⏎")

    def cell(pairs: list[tuple[int, float]]) -> str:
        return ", ".join(f"`{token(t)}` {cosine:.2f}" for t, cosine in pairs)

    lines = [
        f"Nearest neighbours by cosine among the {num_candidates:,} tokens of the training split (␣ is a space). "
        f"Probe score: {scores[0]:.3f} before training, {scores[1]:.3f} after.",
        "",
        "| word | before training (embed stage) | after training (train stage) |",
        "|---|---|---|",
        *(f"| `{token(i)}` | {cell(b)} | {cell(a)} |" for i, b, a in zip(ids, before, after, strict=True)),
    ]
    return "\n".join(lines) + "\n"


def pca_rows(words: list[str], ids: list[int], matrices: dict[str, Any]) -> list[dict]:
    """The words' embeddings in each of `matrices` (name -> token embedding matrix) projected to 2-D by PCA,
    one row a word and matrix: word, embeddings (the name), pc1, pc2 (rounded to 6 places, so files are stable)."""
    rows = []
    for name, weight in matrices.items():
        rows += [
            {"word": word.strip(), "embeddings": name, "pc1": round(float(x), 6), "pc2": round(float(y), 6)}
            for word, (x, y) in zip(words, pca_2d(weight[ids]), strict=True)
        ]
    return rows
