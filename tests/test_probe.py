"""llmpipe.probe: nearest neighbours, PCA, and the score comparing embeddings with co-occurrence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from llmpipe import probe
from llmpipe.baselines import bigram_cross_entropy
from llmpipe.errors import PipelineError
from llmpipe.model import GPTConfig, GPTModel
from llmpipe.probe import (
    average_ranks,
    cooccurrence_counts,
    nearest_neighbours,
    pca_2d,
    ppmi,
    probe_score,
    spearman,
)
from llmpipe.training import train

VOCAB_SIZE = 200
NUM_FUNCTION_WORDS = 20
NUM_TOPICS = 8
TOPIC_SIZE = 22  # ids 20..195 are topic words; 196..199 never occur
SENTENCE_LENGTH = 12

pytestmark = pytest.mark.usefixtures("one_thread")


def zipf(n: int) -> np.ndarray:
    weights = 1 / np.arange(1, n + 1)
    return weights / weights.sum()


def topic_stream(num_tokens: int = 30_000) -> np.ndarray:
    """A real-ish token stream: sentences about one topic each, Zipfian words, 40% shared function words."""
    rng = np.random.default_rng(0)
    topics = np.repeat(rng.integers(0, NUM_TOPICS, num_tokens // SENTENCE_LENGTH + 1), SENTENCE_LENGTH)[:num_tokens]
    topic_words = NUM_FUNCTION_WORDS + topics * TOPIC_SIZE + rng.choice(TOPIC_SIZE, num_tokens, p=zipf(TOPIC_SIZE))
    function_words = rng.choice(NUM_FUNCTION_WORDS, num_tokens, p=zipf(NUM_FUNCTION_WORDS))
    return np.where(rng.random(num_tokens) < 0.4, function_words, topic_words).astype(np.uint16)


@pytest.fixture(scope="module")
def stream() -> np.ndarray:
    return topic_stream()


def test_random_embeddings_score_about_zero(stream):
    for seed in range(3):
        torch.manual_seed(seed)
        weight = torch.nn.Embedding(VOCAB_SIZE, 32).weight  # as an untrained GPTModel's tok_emb

        assert abs(probe_score(weight, stream)) < 0.1


def test_embeddings_from_the_ppmi_rows_score_high(stream):
    counts = np.bincount(stream, minlength=VOCAB_SIZE)
    ids = probe.most_frequent_ids(counts, 100)
    u, s, _ = np.linalg.svd(ppmi(cooccurrence_counts(stream, ids, window=2)))
    weight = np.zeros((VOCAB_SIZE, 16))
    weight[ids] = u[:, :16] * s[:16]

    assert probe_score(weight, stream, num_tokens=100, window=2) > 0.5


def test_embeddings_that_know_the_topics_score_well_above_random(stream):
    rng = np.random.default_rng(0)
    topic_vectors = rng.normal(size=(NUM_TOPICS, 32))
    weight = rng.normal(scale=0.5, size=(VOCAB_SIZE, 32))
    topic_ids = np.arange(NUM_FUNCTION_WORDS, NUM_FUNCTION_WORDS + NUM_TOPICS * TOPIC_SIZE)
    weight[topic_ids] += np.repeat(topic_vectors, TOPIC_SIZE, axis=0)

    assert probe_score(weight, stream) > 0.2  # random: |score| < 0.02 with this stream


def windows(ids: np.ndarray, max_length: int, stride: int) -> TensorDataset:
    ids = torch.from_numpy(ids.astype(np.int64))
    starts = range(0, len(ids) - max_length, stride)
    return TensorDataset(
        torch.stack([ids[i : i + max_length] for i in starts]),
        torch.stack([ids[i + 1 : i + max_length + 1] for i in starts]),
    )


def test_training_raises_the_score_and_beats_the_bigram_baseline(stream):
    train_ids, val_ids = stream[:27_000], stream[27_000:]
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(VOCAB_SIZE, 16, 32, 2, 2, 0.0, False))
    before = probe_score(model.tok_emb.weight, train_ids)

    records = train(
        model,
        DataLoader(windows(train_ids, 16, 4), batch_size=16, shuffle=True, drop_last=True),
        DataLoader(windows(val_ids, 16, 16), batch_size=16),
        lr=1e-2,
        weight_decay=0.1,
        max_steps=150,
        eval_every=150,
        eval_batches=20,
        device=torch.device("cpu"),
    )

    assert abs(before) < 0.05
    assert probe_score(model.tok_emb.weight, train_ids) > before + 0.1
    assert records[-1]["val_loss"] < bigram_cross_entropy(train_ids, val_ids, VOCAB_SIZE)


def test_cooccurrence_counts_by_hand(monkeypatch):
    tokens = np.array([5, 7, 5, 9, 7], dtype=np.uint16)
    ids = np.array([5, 7])

    # Window 1: (5,7) and (7,5) next to each other; 9 is not counted.
    assert cooccurrence_counts(tokens, ids, 1).tolist() == [[0, 2], [2, 0]]
    # Window 2 adds 5..5 (positions 0 and 2, both ways round: 2) and 5..7 (positions 2 and 4).
    assert cooccurrence_counts(tokens, ids, 2).tolist() == [[2, 3], [3, 0]]
    monkeypatch.setattr(probe, "CHUNK", 2)
    assert cooccurrence_counts(tokens, ids, 2).tolist() == [[2, 3], [3, 0]]
    assert cooccurrence_counts(tokens, np.array([9, 5]), 3).tolist() == [[0, 2], [2, 2]]


def test_chunked_counting_matches_counting_whole(stream, monkeypatch):
    ids = probe.most_frequent_ids(np.bincount(stream), 50)
    whole = cooccurrence_counts(stream, ids, 3)
    monkeypatch.setattr(probe, "CHUNK", 1001)

    assert np.array_equal(cooccurrence_counts(stream, ids, 3), whole)
    assert np.array_equal(whole, whole.T)
    assert whole.sum() == 2 * sum(
        int(np.isin(stream[:-offset], ids).astype(int) @ np.isin(stream[offset:], ids)) for offset in (1, 2, 3)
    )


def test_ppmi_by_hand():
    result = ppmi(np.array([[0, 2], [2, 4]]))
    # total 8; row sums 2 and 6. (0,1): ln(2 * 8 / (2 * 6)) = ln(4/3); (1,1): ln(4 * 8 / 36) < 0, so 0.
    assert result == pytest.approx(np.array([[0, math.log(4 / 3)], [math.log(4 / 3), 0]]), rel=1e-12)


def test_most_frequent_ids_breaks_ties_by_id_and_skips_absent_tokens():
    counts = np.array([3, 0, 5, 3, 1])

    assert probe.most_frequent_ids(counts, 3).tolist() == [2, 0, 3]
    assert probe.most_frequent_ids(counts, 10).tolist() == [2, 0, 3, 4]


def test_spearman_and_average_ranks_by_hand():
    assert average_ranks(np.array([10, 20, 10, 30])).tolist() == [1.5, 3, 1.5, 4]
    assert spearman(np.array([1, 2, 3, 4]), np.array([1, 3, 2, 4])) == pytest.approx(0.8)
    assert spearman(np.array([1, 1, 2]), np.array([1, 2, 3])) == pytest.approx(math.sqrt(3) / 2)
    assert spearman(np.array([1, 2, 3]), np.array([30, 20, 10])) == pytest.approx(-1)
    assert spearman(np.array([1, 2, 3]), np.array([10, 100, 1000])) == pytest.approx(1)  # ranks, not values
    assert spearman(np.array([1, 2, 3]), np.array([5, 5, 5])) == 0.0


def test_probe_refuses_too_few_tokens_and_ids_without_an_embedding():
    weight = np.eye(10)
    with pytest.raises(PipelineError, match=r"only 2 distinct tokens"):
        probe_score(weight, np.array([1, 2, 1, 2, 1]))
    with pytest.raises(PipelineError, match=r"token id 12 is outside the vocabulary of 10"):
        probe_score(weight, np.array([1, 2, 3, 12]))


MATRIX = np.array(
    [
        [1.0, 0.0],  # 0
        [0.0, 1.0],  # 1: orthogonal to 0
        [-2.0, 0.0],  # 2: opposite to 0
        [3.0, 3.0],  # 3: 45 degrees from 0, longer
        [0.9, 0.1],  # 4: close to 0
    ]
)


def test_nearest_neighbours_by_cosine_leaving_out_the_query():
    neighbours = nearest_neighbours(MATRIX, [0, 2], k=3)

    assert [i for i, _ in neighbours[0]] == [4, 3, 1]
    assert [c for _, c in neighbours[0]] == pytest.approx([0.9 / math.hypot(0.9, 0.1), math.sqrt(0.5), 0.0])
    assert [i for i, _ in neighbours[1]] == [1, 3, 4]
    assert neighbours[1][0][1] == pytest.approx(0.0)


def test_nearest_neighbours_takes_a_tensor_and_caps_k():
    from_tensor = nearest_neighbours(torch.tensor(MATRIX, dtype=torch.float64), [1], k=10)

    assert from_tensor == nearest_neighbours(MATRIX, [1], k=10)
    assert [i for i, _ in from_tensor[0]] == [3, 4, 0, 2]
    with pytest.raises(PipelineError, match=r"token id 5 has no embedding"):
        nearest_neighbours(MATRIX, [5], k=1)


def test_pca_of_points_on_a_line_is_their_position_along_it():
    t = np.array([-2.0, 0.5, 1.0, 3.0, 7.5])
    points = np.outer(t, [0.6, 0.8, 0.0]) + np.array([10.0, -3.0, 2.0])

    projected = pca_2d(points)

    assert projected.shape == (5, 2)
    assert projected[:, 0] == pytest.approx(t - t.mean())  # the axis's largest coordinate, 0.8, is positive
    assert projected[:, 1] == pytest.approx(np.zeros(5), abs=1e-12)


def test_pca_is_deterministic_and_ordered_by_variance():
    vectors = np.random.default_rng(0).normal(size=(40, 8)) * np.arange(1, 9)

    projected = pca_2d(vectors)

    assert projected.shape == (40, 2)
    assert projected.tobytes() == pca_2d(vectors.copy()).tobytes()
    assert projected.tobytes() == pca_2d(torch.tensor(vectors)).tobytes()
    assert projected[:, 0].var() >= projected[:, 1].var()
    assert projected[:, 0] @ projected[:, 1] == pytest.approx(0, abs=1e-9)
    assert projected.mean(axis=0) == pytest.approx([0, 0], abs=1e-12)


def test_pca_sign_does_not_depend_on_the_svd_sign():
    vectors = np.random.default_rng(1).normal(size=(10, 3))
    axis = np.linalg.svd(vectors - vectors.mean(axis=0))[2][0]
    axis *= np.sign(axis[np.argmax(np.abs(axis))])

    assert pca_2d(vectors)[:, 0] == pytest.approx((vectors - vectors.mean(axis=0)) @ axis)
    assert pca_2d(np.array([[1.0, 2.0]])).tolist() == [[0.0, 0.0]]
