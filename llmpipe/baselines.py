"""Baselines that give a validation loss its meaning: what counting tokens, or pairs of tokens, achieves.

Both return cross-entropy in nats per predicted token, the units of torch's cross_entropy and so of the
book's training and validation losses (chapter 5.1.2): a model whose validation loss is not below the bigram
baseline has learned no more than which token tends to follow which. For reference, a model that guesses
uniformly scores ln(vocab_size), 10.8 for GPT-2's 50,257 tokens.

Token ids come as numpy integer arrays (uint16 memmaps of data/dataset/*.bin included) and are read CHUNK ids
at a time, so memory grows with the vocabulary and the number of distinct pairs, not with the corpus.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from llmpipe.errors import PipelineError, shown

# Ids read at a time: 32 MB as int64.
CHUNK = 1 << 22


def chunks(ids: np.ndarray, vocab_size: int, overlap: int = 0) -> Iterator[np.ndarray]:
    """Yield `ids` as int64 arrays of CHUNK ids, each followed by the next `overlap` ids (so pairs span chunks).

    Raises PipelineError for an id outside [0, vocab_size).
    """
    for start in range(0, len(ids), CHUNK):
        chunk = np.asarray(ids[start : start + CHUNK + overlap], dtype=np.int64)
        low, high = int(chunk.min()), int(chunk.max())
        if low < 0 or high >= vocab_size:
            raise PipelineError(
                f"token id {low if low < 0 else high} is outside the vocabulary of {vocab_size}: the token ids and "
                "the vocabulary size must come from the same tokenizer (tokenize.encoding)"
            )
        yield chunk


def token_counts(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """How often each id occurs in `ids`: an int64 array of length vocab_size.

    Raises PipelineError for an id outside [0, vocab_size).
    """
    counts = np.zeros(vocab_size, dtype=np.int64)
    for chunk in chunks(ids, vocab_size):
        counts += np.bincount(chunk, minlength=vocab_size)
    return counts


def unigram_probabilities(train_ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """P(b) = (count(b) + 1) / (len(train_ids) + vocab_size): add-one smoothing, so no token has probability 0."""
    return (token_counts(train_ids, vocab_size) + 1) / (len(train_ids) + vocab_size)


def unigram_cross_entropy(train_ids: np.ndarray, val_ids: np.ndarray, vocab_size: int) -> float:
    """The cross-entropy of val_ids under unigram_probabilities counted on train_ids, ignoring all context.

    Takes the training and validation token ids and the vocabulary size. Returns -mean(ln P(b)) over every
    validation token b, in nats. Raises PipelineError if either split is empty or holds an id outside the
    vocabulary.
    """
    check_lengths(train_ids, val_ids, min_val=1)
    log_p = np.log(unigram_probabilities(train_ids, vocab_size))
    total = sum(float(log_p[chunk].sum()) for chunk in chunks(val_ids, vocab_size))
    return -total / len(val_ids)


def bigram_cross_entropy(
    train_ids: np.ndarray, val_ids: np.ndarray, vocab_size: int, weight: float | None = None
) -> float:
    """The cross-entropy of val_ids under a bigram model counted on train_ids, interpolated with the unigram.

    P(b | a) = λ_a · count(a, b) / count(a) + (1 - λ_a) · P_unigram(b), with counts of consecutive training
    pairs (count(a) = how often a is followed by anything) and P_unigram from unigram_probabilities. With
    weight=None, λ_a is Witten-Bell's count(a) / (count(a) + T(a)), T(a) being the number of distinct tokens
    seen after a: a context followed by many different tokens leaves more probability to unseen ones. A number
    in [0, 1) is used as λ_a for every seen context instead. λ_a = 0 for a context never seen in training.

    Takes the training and validation token ids, the vocabulary size and the weight. Returns -mean(ln P(b | a))
    over every consecutive validation pair (a, b), in nats. Raises PipelineError if the training split is empty,
    the validation split has fewer than 2 tokens, an id is outside the vocabulary, or the weight is outside
    [0, 1).
    """
    check_lengths(train_ids, val_ids, min_val=2)
    if weight is not None and not 0 <= weight < 1:
        raise PipelineError(f"the bigram weight is {shown(weight)}: use a number in [0, 1), or None for Witten-Bell")
    p_unigram = unigram_probabilities(train_ids, vocab_size)
    keys, pair_counts = bigram_counts(train_ids, vocab_size)
    contexts = keys // vocab_size
    context_counts = np.bincount(contexts, weights=pair_counts, minlength=vocab_size)
    if weight is None:
        followers = np.bincount(contexts, minlength=vocab_size)
        lam = context_counts / np.maximum(context_counts + followers, 1)
    else:
        lam = np.where(context_counts > 0, weight, 0.0)
    total = 0.0
    for chunk in chunks(val_ids, vocab_size, overlap=1):
        a, b = chunk[:-1], chunk[1:]
        count_ab = lookup_counts(keys, pair_counts, a * vocab_size + b)
        p = lam[a] * count_ab / np.maximum(context_counts[a], 1) + (1 - lam[a]) * p_unigram[b]
        total += float(np.log(p).sum())
    return -total / (len(val_ids) - 1)


def bigram_counts(ids: np.ndarray, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The consecutive pairs (a, b) of `ids` as sorted distinct keys a * vocab_size + b, and how often each occurs.

    Counts each chunk apart and merges them once the unmerged counts are as many as the merged ones, so the total
    sorting work stays proportional to the corpus times a logarithm.
    """
    keys, counts = np.empty(0, np.int64), np.empty(0, np.int64)
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    for chunk in chunks(ids, vocab_size, overlap=1):
        pending.append(np.unique(chunk[:-1] * vocab_size + chunk[1:], return_counts=True))
        if sum(len(part_keys) for part_keys, _ in pending) >= len(keys):
            keys, counts = merge_counts([(keys, counts), *pending])
            pending = []
    return merge_counts([(keys, counts), *pending])


def merge_counts(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct keys of all `parts` and, for each, the sum of its counts over the parts."""
    keys, inverse = np.unique(np.concatenate([part_keys for part_keys, _ in parts]), return_inverse=True)
    counts = np.bincount(inverse, weights=np.concatenate([part_counts for _, part_counts in parts]))
    return keys, counts.astype(np.int64)


def lookup_counts(keys: np.ndarray, counts: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The count of each query key in the sorted `keys` (0 for a key not there)."""
    if len(keys) == 0:
        return np.zeros(len(queries), dtype=np.int64)
    index = np.minimum(np.searchsorted(keys, queries), len(keys) - 1)
    return np.where(keys[index] == queries, counts[index], 0)


def check_lengths(train_ids: np.ndarray, val_ids: np.ndarray, min_val: int) -> None:
    """Raise PipelineError if the training split is empty or the validation split has under `min_val` tokens."""
    if len(train_ids) == 0:
        raise PipelineError("the training split is empty: lower dataset.val_fraction or add text to the corpus")
    if len(val_ids) < min_val:
        raise PipelineError(
            f"the validation split holds {len(val_ids)} tokens, too few for a baseline (at least {min_val}): "
            "raise dataset.val_fraction"
        )
