"""Shuffled orders of window indices in constant memory, for one process or for every rank of a distributed run.

Why: a shuffle that materialises its order costs memory in proportion to the windows. A 1 GB corpus at stride 1 has
about 300 million windows: a torch.randperm of them holds 4 bytes a window (1.2 GB), and torch's DistributedSampler
holds a Python list, about 36 bytes a window (11 GB), on every rank.

How: IndexPermutation computes the position-to-index map on demand. A Feistel network over the smallest domain of an
even number of bits that holds `size` is a bijection of that domain whatever its round function (here the splitmix64
finaliser of the half, keyed by the seed and round); cycle walking (applying it again until the value falls below
`size`) restricts it to a bijection of range(size). So each epoch yields every index exactly once, computed a slice
at a time, and the same seed gives the same order on every machine (pure 64-bit integer arithmetic).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

ROUNDS = 6  # Luby-Rackoff: 4 rounds already make a Feistel network pseudo-random; 2 more cost little
SLICE = 1 << 16  # indices computed at a time: 0.5 MB of uint64, so an epoch's memory does not grow with its length
MAX_SIZE = 1 << 63  # the largest index must fit int64
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(value: int) -> int:
    """The splitmix64 finaliser of a Python int taken mod 2**64: a bijection that scatters every input bit."""
    value &= _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def _mix64_array(values: np.ndarray) -> np.ndarray:
    """_mix64 over a uint64 array, in place; the products wrap mod 2**64 as intended."""
    with np.errstate(over="ignore"):
        values ^= values >> np.uint64(30)
        values *= np.uint64(0xBF58476D1CE4E5B9)
        values ^= values >> np.uint64(27)
        values *= np.uint64(0x94D049BB133111EB)
        values ^= values >> np.uint64(31)
    return values


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's permutation: a 64-bit mix of (seed, epoch), the same on every rank and machine."""
    return _mix64(_mix64(seed) ^ _mix64(epoch + _GOLDEN))


class IndexPermutation:
    """A seeded bijection of range(size), computed on demand and never held in memory.

    Takes `size` (0 <= size <= 2**63) and `seed` (any int, taken mod 2**64). perm[i] and perm.take(positions)
    give the index at those positions of the shuffled order; they raise IndexError for positions outside range(size).
    """

    def __init__(self, size: int, seed: int):
        if not 0 <= size <= MAX_SIZE:
            raise ValueError(f"size must be in [0, 2**63], got {size}")
        self.size = size
        half_bits = max(1, ((size - 1).bit_length() + 1) // 2)
        self._half_bits = np.uint64(half_bits)
        self._half_mask = np.uint64((1 << half_bits) - 1)
        base = _mix64(seed)
        self._keys = [np.uint64(_mix64(base + (round_ + 1) * _GOLDEN)) for round_ in range(ROUNDS)]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, position: int) -> int:
        """The index at `position` of the order; raises IndexError outside range(size)."""
        return int(self.take(np.array([position], dtype=np.int64))[0])

    def take(self, positions: np.ndarray) -> np.ndarray:
        """The indices (int64, same shape) at integer `positions`; raises IndexError if one is outside range(size)."""
        positions = np.asarray(positions)
        if positions.dtype.kind not in "iu":
            raise TypeError(f"positions must be integers, got an array of {positions.dtype}")
        if positions.size and (positions.min() < 0 or positions.max() >= self.size):
            raise IndexError(f"positions must be in range({self.size}), got {positions.min()}..{positions.max()}")
        values = self._feistel(positions.astype(np.uint64).ravel())
        # Cycle walking: the domain is at most 4 x size, so values outside range(size) are few and soon walk back in.
        outside = np.flatnonzero(values >= np.uint64(self.size))
        while outside.size:
            walked = self._feistel(values[outside])
            values[outside] = walked
            outside = outside[walked >= np.uint64(self.size)]
        return values.astype(np.int64).reshape(positions.shape)

    def _feistel(self, values: np.ndarray) -> np.ndarray:
        """The balanced Feistel network over 2 x half_bits bits, applied to a uint64 array (a new array)."""
        left, right = values >> self._half_bits, values & self._half_mask
        for key in self._keys:
            mixed = _mix64_array(right ^ key) & self._half_mask
            left, right = right, left ^ mixed
        return (left << self._half_bits) | right


def _positions(start: int, stop: int, step: int) -> Iterator[np.ndarray]:
    """range(start, stop, step) as int64 arrays of at most SLICE items."""
    for first in range(start, stop, step * SLICE):
        yield np.arange(first, min(first + step * SLICE, stop), step, dtype=np.int64)


class ShuffledWindows(Sampler[int]):
    """Every window index once an epoch, in a new seeded order each epoch, in constant memory.

    Takes the number of windows, a seed and whether to shuffle (shuffle=False yields range order). The epoch is
    set_epoch's, and it advances by one after each full pass, so re-iterating a DataLoader gives a new order each
    epoch as torch's RandomSampler with a generator does; set_epoch(e) reproduces epoch e's order.
    """

    def __init__(self, num_windows: int, seed: int, shuffle: bool = True):
        self.num_windows = num_windows
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def __len__(self) -> int:
        return self.num_windows

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass yield epoch `epoch`'s order."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        permutation = IndexPermutation(self.num_windows, epoch_seed(self.seed, self.epoch))
        for positions in _positions(0, self.num_windows, 1):
            yield from (permutation.take(positions) if self.shuffle else positions).tolist()
        self.epoch += 1


class DistributedWindows(Sampler[int]):
    """Each rank's share of the window indices, as torch's DistributedSampler gives it, in constant memory.

    Takes the number of windows, the number of replicas and this rank (both default to torch.distributed's world size
    and rank), a seed, shuffle and drop_last. As DistributedSampler: an epoch's order (the same on every rank; the
    order ShuffledWindows gives at that epoch) is padded by wrapping around to a multiple of num_replicas, or cut to
    one with drop_last; rank r takes positions r, r + num_replicas, ...; len() is the per-rank count; set_epoch(e)
    selects the order, which, as in torch, stays the same until it is called again. Raises ValueError for a rank
    outside [0, num_replicas - 1] and RuntimeError when a default is needed and torch.distributed is unavailable.
    """

    def __init__(
        self,
        num_windows: int,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
    ):
        if num_replicas is None or rank is None:
            if not dist.is_available():
                raise RuntimeError("Requires distributed package to be available")
            num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
            rank = dist.get_rank() if rank is None else rank
        if num_replicas < 1:
            raise ValueError(f"Invalid num_replicas {num_replicas}, num_replicas should be at least 1")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"Invalid rank {rank}, rank should be in the interval [0, {num_replicas - 1}]")
        self.num_windows = num_windows
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        # DistributedSampler's counts, in integer arithmetic: drop_last keeps num_windows // num_replicas a rank.
        self.num_samples = num_windows // num_replicas if drop_last else -(-num_windows // num_replicas)
        self.total_size = self.num_samples * num_replicas

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Select epoch `epoch`'s order; call it with the same epoch on every rank."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        permutation = IndexPermutation(self.num_windows, epoch_seed(self.seed, self.epoch))
        for positions in _positions(self.rank, self.total_size, self.num_replicas):
            positions %= self.num_windows  # the padding wraps around to the start of the order
            yield from (permutation.take(positions) if self.shuffle else positions).tolist()
