"""llmpipe.training (the book's chapter-5 loop) and llmpipe.baselines (the losses to beat)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from llms_from_scratch.ch05 import calc_loss_loader
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from llmpipe import baselines
from llmpipe.baselines import bigram_cross_entropy, unigram_cross_entropy
from llmpipe.errors import PipelineError
from llmpipe.model import GPTConfig, GPTModel
from llmpipe.training import calc_loss_batch, evaluate, perplexity, seed_everything, train

CPU = torch.device("cpu")
VOCAB_SIZE = 60
MAX_LENGTH = 8
CONFIG = GPTConfig(
    vocab_size=VOCAB_SIZE, context_length=MAX_LENGTH, emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.0, qkv_bias=False
)
WITH_DROPOUT = dataclasses.replace(CONFIG, drop_rate=0.1)  # so dropout masks depend on the seed too

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def restore_determinism_setting():
    """seed_everything switches deterministic algorithms on for the whole process: switch it back after."""
    enabled = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(enabled)


def corpus(num_tokens: int = 2000) -> torch.Tensor:
    """Token ids where each token mostly follows from the last (next = 7 * previous + 1 mod VOCAB_SIZE)."""
    rng = np.random.default_rng(0)
    ids = np.empty(num_tokens, dtype=np.int64)
    ids[0] = 0
    noise = rng.random(num_tokens) < 0.1
    random_ids = rng.integers(0, VOCAB_SIZE, num_tokens)
    for i in range(1, num_tokens):
        ids[i] = random_ids[i] if noise[i] else (7 * ids[i - 1] + 1) % VOCAB_SIZE
    return torch.from_numpy(ids)


def windows(ids: torch.Tensor) -> TensorDataset:
    """The book's GPTDatasetV1 with stride = max_length: inputs of max_length ids, targets shifted by one."""
    starts = range(0, len(ids) - MAX_LENGTH, MAX_LENGTH)
    return TensorDataset(
        torch.stack([ids[i : i + MAX_LENGTH] for i in starts]),
        torch.stack([ids[i + 1 : i + MAX_LENGTH + 1] for i in starts]),
    )


def loaders() -> tuple[DataLoader, DataLoader]:
    """Shuffled training batches of 8 windows (whole batches only) and validation batches in order."""
    ids = corpus()
    split = int(0.9 * len(ids))
    train_loader = DataLoader(
        windows(ids[:split]),
        batch_size=8,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(123),
    )
    return train_loader, DataLoader(windows(ids[split:]), batch_size=8)


def new_model() -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(CONFIG)


def run(model: GPTModel, train_loader, val_loader, **overrides) -> list[dict]:
    settings = {"lr": 1e-2, "weight_decay": 0.1, "max_steps": 30, "eval_every": 10, "eval_batches": 2, "device": CPU}
    return train(model, train_loader, val_loader, **{**settings, **overrides})


def test_one_optimizer_step_lowers_the_loss_on_a_fixed_batch():
    batch = next(iter(loaders()[0]))
    single = DataLoader(TensorDataset(*batch), batch_size=len(batch[0]))

    records = run(new_model(), single, single, lr=1e-3, max_steps=1, eval_every=1, eval_batches=1)

    assert [r["step"] for r in records] == [0, 1]
    assert records[1]["train_loss"] < records[0]["train_loss"]
    assert records[0]["train_loss"] == records[0]["val_loss"]  # the same batch, measured the same way


def test_training_lowers_the_loss_and_records_the_last_step():
    train_loader, val_loader = loaders()
    steps, evaluated = [], []

    records = run(
        new_model(),
        train_loader,
        val_loader,
        max_steps=25,
        on_step=lambda step, loss, tokens_seen: steps.append((step, loss, tokens_seen)),
        on_eval=evaluated.append,
    )

    assert [r["step"] for r in records] == [0, 10, 20, 25]
    assert evaluated == records
    train_losses = [r["train_loss"] for r in records]
    assert train_losses == sorted(train_losses, reverse=True)
    assert train_losses[-1] < 0.7 * train_losses[0]
    assert records[-1]["val_loss"] < records[0]["val_loss"]
    assert abs(records[0]["train_loss"] - math.log(VOCAB_SIZE)) < 0.5  # untrained: about uniform
    assert [s[0] for s in steps] == list(range(1, 26))
    assert records[-1]["tokens_seen"] == steps[-1][2] == 25 * 8 * MAX_LENGTH
    assert records[0] | {"train_loss": 0, "val_loss": 0} == {
        "step": 0,
        "epoch": 0,
        "tokens_seen": 0,
        "train_loss": 0,
        "val_loss": 0,
        "lr": 1e-2,
    }
    assert all(math.isfinite(loss) for _, loss, _ in steps)


def test_training_cycles_epochs_and_tells_the_sampler_each_one():
    class RecordingSampler(DistributedSampler):
        def set_epoch(self, epoch: int) -> None:
            epochs.append(epoch)
            super().set_epoch(epoch)

    epochs: list[int] = []
    dataset = windows(corpus(num_tokens=330))  # 41 windows: 5 full batches of 8 an epoch
    sampler = RecordingSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
    train_loader = DataLoader(dataset, batch_size=8, sampler=sampler, drop_last=True)

    records = run(new_model(), train_loader, loaders()[1], max_steps=12, eval_every=5)

    assert epochs == [0, 1, 2]
    assert [(r["step"], r["epoch"]) for r in records] == [(0, 0), (5, 0), (10, 1), (12, 2)]


def test_same_seed_gives_a_byte_identical_state_dict():
    def trained_bytes(seed: int) -> bytes:
        seed_everything(seed)
        model = GPTModel(WITH_DROPOUT)
        run(model, *loaders(), max_steps=8, eval_every=4)
        return b"".join(name.encode() + t.numpy().tobytes() for name, t in model.state_dict().items())

    first = trained_bytes(7)
    assert torch.are_deterministic_algorithms_enabled()
    assert trained_bytes(7) == first
    assert trained_bytes(8) != first


def test_a_diverging_learning_rate_raises_naming_the_step_and_train_lr():
    with pytest.raises(
        PipelineError, match=r"the training loss became nan at step 2: .*lower train\.lr \(now 1e\+30\)"
    ):
        run(new_model(), *loaders(), lr=1e30, max_steps=20, eval_every=100)


def test_a_nan_loss_names_the_step_it_appeared_at():
    class PoisonedGPT(GPTModel):
        poisoned = False

        def forward(self, in_idx):
            logits = super().forward(in_idx)
            return logits * math.nan if self.poisoned else logits

    model = PoisonedGPT(CONFIG)

    def poison_after_step_2(step, loss, tokens_seen):
        model.poisoned = step == 2

    with pytest.raises(PipelineError, match=r"the training loss became nan at step 3: .*train\.lr"):
        run(model, *loaders(), max_steps=5, eval_every=100, on_step=poison_after_step_2)


def test_evaluate_is_the_books_calc_loss_loader_and_restores_the_mode():
    model = new_model()
    val_loader = loaders()[1]
    with torch.no_grad():
        expected = calc_loss_loader(val_loader, model, CPU, num_batches=3)

    model.train()
    assert evaluate(model, val_loader, 3, CPU) == pytest.approx(expected, rel=1e-12)
    assert model.training
    model.eval()
    evaluate(model, val_loader, 3, CPU)
    assert not model.training


def test_evaluate_averages_all_batches_when_asked_for_more_and_runs_without_dropout():
    model = GPTModel(WITH_DROPOUT)
    val_loader = loaders()[1]
    model.eval()
    with torch.no_grad():
        expected = np.mean([calc_loss_batch(x, y, model, CPU).item() for x, y in val_loader])
    model.train()

    assert evaluate(model, val_loader, 10_000, CPU) == pytest.approx(expected, rel=1e-12)
    assert evaluate(model, val_loader, 10_000, CPU) == evaluate(model, val_loader, 10_000, CPU)


def test_empty_loaders_raise():
    train_loader, val_loader = loaders()
    empty = DataLoader(windows(corpus(num_tokens=40)), batch_size=8, drop_last=True)  # 4 windows: no full batch

    with pytest.raises(PipelineError, match=r"holds no batch.*dataset\.batch_size"):
        run(new_model(), empty, val_loader)
    with pytest.raises(PipelineError, match=r"holds no batch.*dataset\.val_fraction"):
        evaluate(new_model(), empty, 2, CPU)
    one_shot = iter([next(iter(train_loader))])  # emptied by the evaluation at step 0: training must not spin
    with pytest.raises(PipelineError, match=r"training split holds no full batch.*dataset\.batch_size"):
        run(new_model(), one_shot, val_loader)


@pytest.mark.parametrize("setting", ["max_steps", "eval_every", "eval_batches"])
@pytest.mark.parametrize("value", [0, -1, 2.5])
def test_schedule_counts_must_be_positive_integers(setting, value):
    with pytest.raises(PipelineError, match=rf"train\.{setting} is {value}: use a positive integer"):
        run(new_model(), *loaders(), **{setting: value})


def test_perplexity_is_exp_of_the_loss():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(50257)) == pytest.approx(50257)
    assert perplexity(1e6) == math.inf


# Baselines: a hand-computed example. Training ids 0 1 0 1 0 2 over a vocabulary of 4 (3 never occurs):
# unigram counts 3, 2, 1, 0 of 6, so add-one P = 4/10, 3/10, 2/10, 1/10.
# Training pairs: (0,1) twice, (0,2) once, (1,0) twice: count(0) = 3 with T(0) = 2 followers, count(1) = 2 with
# T(1) = 1, and 2 is never followed. Witten-Bell: λ_0 = 3/5, λ_1 = 2/3, λ_3 = 0.
TRAIN_IDS = np.array([0, 1, 0, 1, 0, 2])
VAL_IDS = np.array([0, 1, 3, 0])


def test_unigram_cross_entropy_by_hand():
    expected = -(math.log(0.4) + math.log(0.3) + math.log(0.1) + math.log(0.4)) / 4

    assert unigram_cross_entropy(TRAIN_IDS, VAL_IDS, 4) == pytest.approx(expected, rel=1e-12)


def test_bigram_cross_entropy_by_hand_with_witten_bell():
    p_1_after_0 = 3 / 5 * 2 / 3 + 2 / 5 * 0.3  # seen pair
    p_3_after_1 = 2 / 3 * 0 + 1 / 3 * 0.1  # unseen pair in a seen context
    p_0_after_3 = 0.4  # unseen context: the unigram alone
    expected = -(math.log(p_1_after_0) + math.log(p_3_after_1) + math.log(p_0_after_3)) / 3

    assert bigram_cross_entropy(TRAIN_IDS, VAL_IDS, 4) == pytest.approx(expected, rel=1e-12)


def test_bigram_cross_entropy_by_hand_with_a_fixed_weight():
    p_1_after_0 = 0.5 * 2 / 3 + 0.5 * 0.3
    p_3_after_1 = 0.5 * 0 + 0.5 * 0.1
    expected = -(math.log(p_1_after_0) + math.log(p_3_after_1) + math.log(0.4)) / 3

    assert bigram_cross_entropy(TRAIN_IDS, VAL_IDS, 4, weight=0.5) == pytest.approx(expected, rel=1e-12)
    assert bigram_cross_entropy(TRAIN_IDS, VAL_IDS, 4, weight=0.0) == pytest.approx(
        unigram_cross_entropy(TRAIN_IDS, VAL_IDS[1:], 4), rel=1e-12
    )


def test_chunked_counting_gives_the_same_numbers(monkeypatch):
    ids = corpus(num_tokens=3000).numpy()
    train_ids, val_ids = ids[:2500], ids[2500:]
    whole = (
        unigram_cross_entropy(train_ids, val_ids, VOCAB_SIZE),
        bigram_cross_entropy(train_ids, val_ids, VOCAB_SIZE),
    )

    monkeypatch.setattr(baselines, "CHUNK", 7)  # pairs straddle chunk edges; merges happen along the way
    chunked = (
        unigram_cross_entropy(train_ids, val_ids, VOCAB_SIZE),
        bigram_cross_entropy(train_ids, val_ids, VOCAB_SIZE),
    )

    assert chunked == pytest.approx(whole, rel=1e-12)


def test_uniform_counts_give_log_vocab_size_and_a_pattern_favours_the_bigram():
    cycle = np.tile(np.arange(50), 40)

    assert unigram_cross_entropy(cycle, cycle[:300], 50) == pytest.approx(math.log(50), rel=1e-12)
    bigram = bigram_cross_entropy(cycle, cycle[:300], 50)
    assert bigram < 0.05 * math.log(50)


def test_bigram_beats_unigram_on_the_markov_corpus():
    ids = corpus().numpy()
    train_ids, val_ids = ids[:1800], ids[1800:]

    unigram = unigram_cross_entropy(train_ids, val_ids, VOCAB_SIZE)
    bigram = bigram_cross_entropy(train_ids, val_ids, VOCAB_SIZE)

    assert bigram < 0.5 * unigram
    assert unigram == pytest.approx(math.log(VOCAB_SIZE), abs=0.1)  # every token is about equally common


def test_baselines_read_uint16_memmaps(tmp_path):
    ids = corpus().numpy()
    path = tmp_path / "train.bin"
    ids.astype(np.uint16).tofile(path)
    memmap = np.memmap(path, dtype=np.uint16, mode="r")

    assert bigram_cross_entropy(memmap[:1800], memmap[1800:], VOCAB_SIZE) == bigram_cross_entropy(
        ids[:1800], ids[1800:], VOCAB_SIZE
    )
    assert unigram_cross_entropy(memmap[:1800], memmap[1800:], VOCAB_SIZE) == unigram_cross_entropy(
        ids[:1800], ids[1800:], VOCAB_SIZE
    )


@pytest.mark.parametrize("baseline", [unigram_cross_entropy, bigram_cross_entropy])
def test_baselines_refuse_empty_splits_and_foreign_ids(baseline):
    with pytest.raises(PipelineError, match=r"training split is empty"):
        baseline(np.array([], dtype=np.uint16), VAL_IDS, 4)
    with pytest.raises(PipelineError, match=r"validation split holds 0 tokens.*dataset\.val_fraction"):
        baseline(TRAIN_IDS, np.array([], dtype=np.uint16), 4)
    with pytest.raises(PipelineError, match=r"token id 4 is outside the vocabulary of 4"):
        baseline(TRAIN_IDS, np.array([0, 4]), 4)
    with pytest.raises(PipelineError, match=r"token id -1 is outside"):
        baseline(np.array([0, -1, 2]), VAL_IDS, 4)


def test_bigram_refuses_a_weight_outside_0_1():
    with pytest.raises(PipelineError, match=r"bigram weight is 1\.0"):
        bigram_cross_entropy(TRAIN_IDS, VAL_IDS, 4, weight=1.0)
