"""The book's chapter-5 training loop (5.1.3 and 5.2), kept as plain as nanoGPT's train.py.

calc_loss_batch and evaluate are the book's calc_loss_batch and calc_loss_loader (5.1.3); train is its
train_model_simple (5.2) counted in optimizer steps rather than epochs, with AdamW as in the book. A stage
drives logging and progress bars through the on_eval and on_step callbacks; nothing here prints.

Step numbering: `step` is the number of optimizer updates done so far. The book's global_step starts at -1, so
its first evaluation ("Step 000000") follows one update; here the first evaluation is at step 0, on the
untrained model (nanoGPT's choice: its loss, about ln(vocab_size), shows the starting point), then after every
eval_every updates, and always after the last update, so the final record measures the final weights.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from llmpipe.errors import PipelineError, shown

# More torch threads than any machine this runs on has cores.
MAX_THREADS = 1024
# Beyond this a loss's exp overflows a float.
LOG_FLOAT_MAX = math.log(sys.float_info.max)


def seed_everything(seed: int) -> None:
    """Make a training run repeatable: the same seed and inputs give a byte-identical state_dict on one machine.

    Takes the seed. Seeds torch (CPU and every GPU), numpy's and Python's global generators, and turns on
    torch.use_deterministic_algorithms, which makes an op without a deterministic kernel raise instead of
    varying. On CUDA, cuBLAS is deterministic only with CUBLAS_WORKSPACE_CONFIG set before its first use: this
    sets ":4096:8" unless the environment already sets it. Returns nothing.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def calc_loss_batch(
    input_batch: torch.Tensor, target_batch: torch.Tensor, model: nn.Module, device: torch.device
) -> torch.Tensor:
    """The mean cross-entropy of `model`'s next-token logits for one batch.

    Takes input and target token ids of shape [batch, seq], the model and the device to run on. Returns the
    loss as a 0-dimensional tensor (with its graph, so it can be backpropagated).
    """
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)
    return nn.functional.cross_entropy(logits.flatten(0, 1), target_batch.flatten())


def evaluate(model: nn.Module, loader: Iterable, num_batches: int, device: torch.device) -> float:
    """The mean of calc_loss_batch over the first `num_batches` batches of `loader` (all, if it has fewer).

    Runs the model in eval mode (no dropout) under torch.no_grad, then puts it back in the mode it was in.
    Returns the mean loss as a float. Raises PipelineError if the loader yields no batch.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            losses = [
                calc_loss_batch(inputs, targets, model, device).item()
                for inputs, targets in itertools.islice(loader, num_batches)
            ]
    finally:
        model.train(was_training)
    if not losses:
        raise PipelineError(
            "a split to evaluate holds no batch: give it more tokens (dataset.val_fraction) or lower dataset.batch_size"
        )
    return sum(losses) / len(losses)


def perplexity(loss: float) -> float:
    """exp(loss): the number of equally likely tokens the model's uncertainty amounts to (inf if it overflows)."""
    return math.inf if loss > LOG_FLOAT_MAX else math.exp(loss)


def train(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    *,
    lr: float,
    weight_decay: float,
    max_steps: int,
    eval_every: int,
    eval_batches: int,
    device: torch.device,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[int, float, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Train `model` in place with AdamW for `max_steps` updates, cycling over `train_loader`'s epochs.

    Takes the model (moved to `device`), the training and validation loaders (yielding (inputs, targets) batches
    of token ids), AdamW's lr and weight_decay, the number of updates, how often to evaluate and on how many
    batches of each loader. At every epoch start, `train_loader.sampler.set_epoch(epoch)` is called when the
    sampler has it (a DistributedSampler reshuffles only then).

    Evaluates at step 0, every eval_every steps and at step max_steps (see the module's docstring); each
    evaluation makes a record {"step", "epoch" (0-based epoch of the last batch trained on), "tokens_seen" (input
    tokens trained on), "train_loss", "val_loss", "lr"}, passed to on_eval(record). After each update,
    on_step(step, loss, tokens_seen) gets that batch's loss. The train loss of a record, as in the book, is
    measured on the train loader's first eval_batches batches; a shuffled loader draws a new order for them, so
    the order of training batches depends on eval_every.

    Returns the records, in order. Raises PipelineError for a non-positive max_steps, eval_every or eval_batches,
    an empty training loader, or a loss that is not finite (naming the step and suggesting a lower train.lr).
    """
    check_schedule(max_steps, eval_every, eval_batches)
    model.to(device)
    model.train()
    # The fused kernel updates all parameters in one pass: 2.5x faster on CPU for the default model, the same
    # AdamW (its last bits can differ from the per-tensor loop's, so it is used whenever the device has it).
    fused = torch.device(device).type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=fused or None)
    batches = cycle_epochs(train_loader)
    records: list[dict[str, Any]] = []
    epoch, tokens_seen = 0, 0

    def record(step: int) -> None:
        train_loss = evaluate(model, train_loader, eval_batches, device)
        val_loss = evaluate(model, val_loader, eval_batches, device)
        check_finite(train_loss, "training loss", step, lr)
        check_finite(val_loss, "validation loss", step, lr)
        records.append(
            {
                "step": step,
                "epoch": epoch,
                "tokens_seen": tokens_seen,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "lr": optimizer.param_groups[0]["lr"],
            }
        )
        if on_eval is not None:
            on_eval(records[-1])

    record(0)
    for step in range(1, max_steps + 1):
        epoch, (input_batch, target_batch) = next(batches)
        optimizer.zero_grad()
        loss = calc_loss_batch(input_batch, target_batch, model, device)
        loss_value = loss.item()
        check_finite(loss_value, "training loss", step, lr)
        loss.backward()
        optimizer.step()
        tokens_seen += input_batch.numel()
        if on_step is not None:
            on_step(step, loss_value, tokens_seen)
        if step % eval_every == 0 or step == max_steps:
            record(step)
    return records


def check_schedule(max_steps: int, eval_every: int, eval_batches: int) -> None:
    """Raise PipelineError, naming the params.yaml key, unless each count is a positive integer."""
    for key, value in (("max_steps", max_steps), ("eval_every", eval_every), ("eval_batches", eval_batches)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PipelineError(f"train.{key} is {shown(value)}: use a positive integer")


def check_finite(loss: float, what: str, step: int, lr: float) -> None:
    """Raise PipelineError if `loss` is NaN or infinite: training diverged, most often from too high a rate."""
    if not math.isfinite(loss):
        raise PipelineError(
            f"the {what} became {loss} at step {step}: training diverged, so lower train.lr (now {lr:g})"
        )


def cycle_epochs(loader: Iterable) -> Iterator[tuple[int, Any]]:
    """Yield (epoch, batch) from `loader` forever, one pass per epoch, telling its sampler the epoch if it listens.

    Raises PipelineError if a pass yields no batch (the loop would otherwise never end).
    """
    for epoch in itertools.count():
        set_epoch = getattr(getattr(loader, "sampler", None), "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
        empty = True
        for batch in loader:
            empty = False
            yield epoch, batch
        if empty:
            raise PipelineError(
                "the training split holds no full batch: lower dataset.batch_size or add tokens to the corpus"
            )


def pin_threads(threads: int) -> None:
    """Run torch's CPU kernels on `threads` threads (train.threads).

    A float sum split over a different number of threads is added in a different order, so its last bits differ:
    pinning the count is part of what makes a run byte-identical to the last one on the same machine. For the
    small default model one thread is also the fastest (two were 3-5x slower under load). Raises PipelineError
    for a count outside [1, MAX_THREADS].
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise PipelineError(f"train.threads is {shown(threads)}: use a whole number from 1 to {MAX_THREADS}")
    torch.set_num_threads(threads)


def num_steps(max_steps: int | None, epochs: int | None, batches_per_epoch: int) -> int:
    """The number of optimizer updates: train.max_steps, or train.epochs passes over the training batches.

    Exactly one of the two must be set (the other null). Raises PipelineError naming both keys otherwise, or
    when the training split holds no full batch.
    """
    if (max_steps is None) == (epochs is None):
        raise PipelineError(
            "set exactly one of train.max_steps and train.epochs (the other to null): training runs for a number "
            "of optimizer steps or a number of passes over the training split"
        )
    if batches_per_epoch < 1:
        raise PipelineError(
            "the training split holds no full batch: lower dataset.batch_size or add tokens to the corpus"
        )
    return max_steps if max_steps is not None else epochs * batches_per_epoch


def validation_loader(dataset_dir, batch_size: int | None = None):
    """The validation split as windows that do not overlap (stride = max_length), in order, last batch kept.

    As the book's chapter 5 builds its validation loader: every validation token is predicted once, whatever
    window.stride the training windows use, so runs at different strides are measured on the same tokens.
    Raises PipelineError as llmpipe.data.load_dataset does (a split with no window included).
    """
    from torch.utils.data import DataLoader

    from llmpipe.data import TokenWindowDataset, collate_windows, load_dataset

    val = load_dataset(dataset_dir, "val")
    windows = TokenWindowDataset(val.tokens_path, val.dtype.name, val.max_length, val.max_length, val.config)
    if len(windows) == 0:
        raise PipelineError(f"{dataset_dir} has no val windows: set dataset.val_fraction above 0 and rerun")
    return DataLoader(
        windows, batch_size=batch_size or val.config["batch_size"], shuffle=False, collate_fn=collate_windows
    )


class Progress:
    """Training progress on stdout: a line at each evaluation (step, epoch, losses, tokens/s), and on a terminal
    a line redrawn at each step. Pass `stepped` as train()'s on_step and call `evaluated` from its on_eval."""

    def __init__(self, max_steps: int):
        self.max_steps = max_steps
        self.start = time.perf_counter()
        self.terminal = sys.stdout.isatty()
        self.width = len(str(max_steps))

    def rate(self, tokens_seen: int) -> str:
        return f"{tokens_seen / max(time.perf_counter() - self.start, 1e-9):,.0f} tokens/s"

    def stepped(self, step: int, loss: float, tokens_seen: int) -> None:
        if self.terminal:
            line = f"step {step:>{self.width}}/{self.max_steps}  loss {loss:.3f}  {self.rate(tokens_seen)}"
            print(f"\r{line}", end="", flush=True)

    def evaluated(self, record: dict) -> None:
        print(
            f"{chr(13) if self.terminal else ''}step {record['step']:>{self.width}}/{self.max_steps}  "
            f"epoch {record['epoch']}  train loss {record['train_loss']:.3f}  val loss {record['val_loss']:.3f}  "
            f"{self.rate(record['tokens_seen'])}",
            flush=True,
        )
