"""llmpipe.sampling: the on-demand permutation and the two constant-memory samplers built on it."""

from __future__ import annotations

import itertools
import tracemalloc
from collections import Counter

import numpy as np
import pytest
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from llmpipe.sampling import DistributedWindows, IndexPermutation, ShuffledWindows, epoch_seed


def peak_bytes(action) -> int:
    """The peak of Python and numpy allocations (tracemalloc) while `action()` runs."""
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def full_order(size: int, seed: int) -> np.ndarray:
    return IndexPermutation(size, seed).take(np.arange(size))


@pytest.mark.parametrize("size", [0, 1, 2, 3, 7, 100, 1000, 2**16 + 3])
def test_permutation_is_a_bijection(size):
    order = full_order(size, seed=7)
    assert order.dtype == np.int64
    assert np.array_equal(np.sort(order), np.arange(size))


def test_item_and_take_agree():
    permutation = IndexPermutation(1000, 3)
    assert [permutation[i] for i in range(20)] == permutation.take(np.arange(20)).tolist()
    assert permutation.take(np.arange(6).reshape(2, 3)).shape == (2, 3)
    assert len(permutation) == 1000


def test_same_seed_same_order_other_seed_other_order():
    assert np.array_equal(full_order(1000, 1), full_order(1000, 1))
    assert not np.array_equal(full_order(1000, 1), full_order(1000, 2))


def test_order_is_pinned():
    """Pure 64-bit integer arithmetic: these orders are the same on every machine and numpy version."""
    assert full_order(10, 0).tolist() == [7, 5, 1, 8, 6, 3, 4, 0, 9, 2]
    assert IndexPermutation(2**40, 123).take(np.array([0, 1, 2**40 - 1])).tolist() == [
        747793377043,
        423724719127,
        342294024244,
    ]


def test_order_is_not_the_identity_and_uncorrelated():
    size = 10_000
    order = full_order(size, 11)
    assert abs(np.corrcoef(np.arange(size), order)[0, 1]) < 0.05
    assert np.count_nonzero(order == np.arange(size)) < 10  # a random permutation has 1 fixed point on average


def test_where_index_0_lands_is_spread_over_seeds():
    landings = Counter(int(np.flatnonzero(full_order(10, seed) == 0)[0]) for seed in range(2000))
    assert sorted(landings) == list(range(10))
    assert all(120 < count < 280 for count in landings.values()), landings  # 200 each on average


def test_every_order_of_3_occurs_about_equally():
    orders = Counter(tuple(full_order(3, seed).tolist()) for seed in range(600))
    assert len(orders) == 6
    assert all(count > 50 for count in orders.values()), orders  # 100 each on average


def test_huge_size_takes_a_few_without_allocating_the_order():
    size = 2**40
    taken = []
    peak = peak_bytes(lambda: taken.append(IndexPermutation(size, 5).take(np.array([0, 1, 12345, size - 1]))))
    assert peak < 1 << 20
    assert len(set(taken[0].tolist())) == 4
    assert all(0 <= index < size for index in taken[0].tolist())


def test_positions_outside_the_range_raise():
    permutation = IndexPermutation(10, 0)
    with pytest.raises(IndexError):
        permutation[10]
    with pytest.raises(IndexError):
        permutation.take(np.array([3, -1]))
    assert permutation.take(np.array([], dtype=np.int64)).size == 0
    with pytest.raises(IndexError):
        IndexPermutation(0, 0)[0]
    with pytest.raises(TypeError):
        permutation.take(np.array([1.5]))


def test_shuffled_windows_epochs_differ_and_each_is_complete():
    sampler = ShuffledWindows(1000, seed=3)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == sorted(second) == list(range(1000))
    assert first != second
    assert len(sampler) == 1000


def test_shuffled_windows_set_epoch_reproduces():
    sampler = ShuffledWindows(1000, seed=3)
    orders = [list(sampler) for _ in range(3)]
    again = ShuffledWindows(1000, seed=3)
    again.set_epoch(2)
    assert list(again) == orders[2]
    again.set_epoch(0)
    assert list(again) == orders[0]


def test_shuffled_windows_advance_only_after_a_full_pass():
    sampler = ShuffledWindows(100, seed=1)
    partial = list(itertools.islice(sampler, 10))
    assert list(sampler)[:10] == partial


def test_shuffled_windows_cross_slices_completely():
    size = 2 * 2**16 + 5
    assert np.array_equal(np.sort(np.fromiter(ShuffledWindows(size, seed=0), dtype=np.int64)), np.arange(size))


def test_shuffled_windows_in_order_without_shuffle():
    assert list(ShuffledWindows(10, seed=3, shuffle=False)) == list(range(10))


def test_a_dataloader_reshuffles_each_epoch():
    loader = DataLoader(range(50), batch_size=4, sampler=ShuffledWindows(50, seed=2), drop_last=True)
    first, second = ([int(i) for batch in loader for i in batch] for _ in range(2))
    assert first != second
    assert len(first) == len(second) == 48


def test_shuffled_windows_memory_does_not_grow_with_the_windows():
    peak = peak_bytes(lambda: list(itertools.islice(ShuffledWindows(10**8, seed=1), 1000)))
    assert peak < 8 << 20  # the order of 10**8 windows would be 400 MB as int32, 800 MB as int64


def distributed_shares(size: int, world: int, **options) -> list[list[int]]:
    return [list(DistributedWindows(size, world, rank, **options)) for rank in range(world)]


def torch_shares(size: int, world: int, **options) -> list[list[int]]:
    return [list(DistributedSampler(range(size), world, rank, **options)) for rank in range(world)]


SIZES = [0, 1, 2, 3, 7, 10, 11, 12]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("drop_last", [False, True])
def test_distributed_in_order_equals_torch(world, size, drop_last):
    ours = distributed_shares(size, world, shuffle=False, drop_last=drop_last)
    assert ours == torch_shares(size, world, shuffle=False, drop_last=drop_last)
    assert [len(DistributedWindows(size, world, rank, drop_last=drop_last)) for rank in range(world)] == [
        len(share) for share in ours
    ]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("drop_last", [False, True])
def test_distributed_shuffled_shares_as_torch(world, size, drop_last):
    ours = distributed_shares(size, world, seed=5, drop_last=drop_last)
    theirs = torch_shares(size, world, seed=5, drop_last=drop_last)
    assert [len(share) for share in ours] == [len(share) for share in theirs]
    counts = Counter(itertools.chain(*ours))
    if drop_last or size % world == 0:
        assert all(count == 1 for count in counts.values())  # disjoint
    if not drop_last:
        assert sorted(counts) == list(range(size))  # together complete
    # The shares interleave back into the epoch's order, padded by wrapping around as torch pads.
    order = list(ShuffledWindows(size, seed=5))
    interleaved = [share[k] for k in range(len(ours[0])) for share in ours]
    wrapped = (order * (world + 1))[: len(interleaved)]
    assert interleaved == wrapped


def test_distributed_epochs():
    sampler = DistributedWindows(1000, 2, 1, seed=4)
    first = list(sampler)
    assert list(sampler) == first  # as DistributedSampler: the same order until set_epoch
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    one_rank = DistributedWindows(1000, 1, 0, seed=4)
    one_rank.set_epoch(1)
    shuffled = ShuffledWindows(1000, seed=4)
    shuffled.set_epoch(1)
    assert list(one_rank) == list(shuffled)


def test_distributed_invalid_rank_raises_as_torch():
    for rank in (-1, 2):
        with pytest.raises(ValueError, match="Invalid rank"):
            DistributedWindows(10, 2, rank)
        with pytest.raises(ValueError, match="Invalid rank"):
            DistributedSampler(range(10), 2, rank)


def test_distributed_defaults_need_a_process_group_as_torch():
    with pytest.raises(Exception) as theirs:
        DistributedSampler(range(10))
    with pytest.raises(type(theirs.value)):
        DistributedWindows(10)


def test_distributed_memory_does_not_grow_with_the_windows():
    peak = peak_bytes(lambda: list(itertools.islice(DistributedWindows(10**8, 4, 3, seed=1), 1000)))
    assert peak < 8 << 20


def test_epoch_seeds_differ():
    assert len({epoch_seed(seed, epoch) for seed in range(10) for epoch in range(10)}) == 100
