"""The order each rank reads a ``.beton`` in, one epoch at a time: a pure function of
(seed, epoch, rank, world size) and the file, so that a run resumed inside an epoch
reads the rest of it exactly as an unbroken run would.

Two orders (``train_loader(order=...)``, the training config's ``data.order``):

* ``'random'`` (:func:`epoch_order`): the whole split permuted every epoch, rank ``r``
  taking every ``world_size``-th sample. Each batch reads images from all over the
  file: cheap when the file sits in the page cache (``in_memory=True``), slower when it
  is read from disk (``in_memory=False``), as many small reads far apart.
* ``'blocks'`` (:func:`block_order`): page-local. The samples whose data starts in
  the same page of the file form a block; the blocks are permuted (the same on every
  rank), dealt to the ranks (each to the one with the fewest samples so far), and each
  rank shuffles the samples within each window of ``window`` consecutive blocks of its
  share, so that it reads a window of neighbouring pages at a time. The price is batch
  diversity: a batch draws from ``window`` pages, so a file written in class order (one
  class after the other) gives batches of few classes; written shuffled (``convert``
  does by default) each page holds a random sample of classes, as the whole split does.

ffcv cuts each rank's order into batches of consecutive ids.
"""
from __future__ import annotations

import heapq

import numpy as np
from ffcv.loader import Loader
from ffcv.traversal_order.base import TraversalOrder

ORDERS = ('random', 'blocks')


def epoch_order(indices: np.ndarray, seed: int, epoch: int, *, shuffle: bool = True,
                rank: int = 0, world_size: int = 1, equal_shards: bool = False
                ) -> np.ndarray:
    """The sample ids rank ``rank`` reads in ``epoch``, in order: ``indices`` permuted
    with ``seed + epoch`` (the same on every rank; unless not ``shuffle``), then every
    ``world_size``-th from position ``rank``. ``equal_shards`` first cuts the
    permutation to a multiple of ``world_size`` (at most ``world_size - 1`` random
    samples sit out the epoch), so that every rank runs the same number of steps."""
    order = indices
    if shuffle:
        order = np.random.default_rng(seed + epoch).permutation(order)
    if equal_shards:
        order = order[:len(order) - len(order) % world_size]
    return order[rank::world_size]


def sample_pages(alloc_table: np.ndarray, page_size: int, num_samples: int) -> np.ndarray:
    """(num_samples,) int64: the page (byte offset // ``page_size``) where each sample's
    first allocation starts, from ffcv's allocation table (fields ``sample_id``,
    ``ptr``); a sample with no allocation gets page -1."""
    pages = np.full(num_samples, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(pages, alloc_table['sample_id'].astype(np.int64),
                  (alloc_table['ptr'] // page_size).astype(np.int64))
    pages[pages == np.iinfo(np.int64).max] = -1
    return pages


def blocks_of(indices: np.ndarray, pages: np.ndarray, min_blocks: int = 1
              ) -> list[np.ndarray]:
    """``indices`` grouped by the page of each (``pages[index]``), in page order, each
    block in index order. A file of fewer than ``min_blocks`` pages (a small one) has
    its largest blocks halved until there are that many, so that every rank gets
    some."""
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) == 0:
        return []
    keyed = indices[np.lexsort((indices, pages[indices]))]
    cuts = np.flatnonzero(np.diff(pages[keyed])) + 1
    blocks = np.split(keyed, cuts)
    while len(blocks) < min_blocks:
        largest = max(range(len(blocks)), key=lambda i: len(blocks[i]))
        if len(blocks[largest]) < 2:
            break
        half = len(blocks[largest]) // 2
        block = blocks[largest]
        blocks[largest:largest + 1] = [block[:half], block[half:]]
    return blocks


def deal_blocks(sizes: list[int], permuted: np.ndarray, world_size: int) -> list[list[int]]:
    """Block ids (in ``permuted`` order) per rank: each block goes to the rank holding
    the fewest samples so far (the lowest rank on a tie), so that shares differ by at
    most one block's samples."""
    shares: list[list[int]] = [[] for _ in range(world_size)]
    loads = [(0, rank) for rank in range(world_size)]  # a heap of (samples, rank)
    for block in permuted.tolist():
        load, rank = heapq.heappop(loads)
        shares[rank].append(block)
        heapq.heappush(loads, (load + sizes[block], rank))
    return shares


def block_order(blocks: list[np.ndarray], seed: int, epoch: int, *, rank: int = 0,
                world_size: int = 1, window: int = 16, equal_shards: bool = False
                ) -> np.ndarray:
    """The sample ids rank ``rank`` reads in ``epoch`` in the page-local order: the
    ``blocks`` (arrays of sample ids, one per page) permuted with (``seed``, ``epoch``),
    the same on every rank, and dealt to the ranks in that order, each to the rank with
    the fewest samples so far (:func:`deal_blocks`); each rank shuffles the samples of
    each ``window`` consecutive blocks of its share with (``seed``, ``epoch``, ``rank``).
    ``equal_shards`` cuts every rank's order to the same length in every epoch, the
    split's share per rank less the largest block (the cut samples sit out the epoch),
    so that every rank runs the same number of steps each epoch."""
    if window < 1:
        raise ValueError(f"window must be at least 1 block, got {window}")
    sizes = [len(block) for block in blocks]
    permuted = np.random.default_rng([seed, epoch]).permutation(len(blocks))
    mine = deal_blocks(sizes, permuted, world_size)[rank]
    rng = np.random.default_rng([seed, epoch, rank])
    parts = []
    for start in range(0, len(mine), window):
        chosen = [blocks[b] for b in mine[start:start + window]]
        parts.append(rng.permutation(np.concatenate(chosen)))
    order = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if equal_shards and world_size > 1:
        order = order[:max(0, sum(sizes) // world_size - max(sizes, default=0))]
    return order


class ShardedOrder(TraversalOrder):
    """Each rank's share of one epoch, in one of :data:`ORDERS`: disjoint shards that
    together cover the split (with ``equal_shards``, less the few samples that even
    shards leave out).

    ffcv's own distributed RANDOM order pads shards by repeating samples, and its
    QUASI_RANDOM order does not support distributed loading at all. ``window``: blocks
    shuffled together in the ``'blocks'`` order.

    ffcv calls the instance with the loader to bind it, hence ``__call__``.
    """

    def __init__(self, loader: Loader | None = None, *, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, equal_shards: bool = False, order: str = 'random',
                 window: int = 16):
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
        self.shuffle, self.rank, self.world_size = shuffle, rank, world_size
        self.equal_shards, self.order, self.window = equal_shards, order, window
        self._blocks = None
        if loader is not None:
            super().__init__(loader)

    def __call__(self, loader: Loader) -> 'ShardedOrder':
        return ShardedOrder(loader, shuffle=self.shuffle, rank=self.rank,
                            world_size=self.world_size, equal_shards=self.equal_shards,
                            order=self.order, window=self.window)

    def sample_order(self, epoch: int) -> np.ndarray:
        if self.order == 'random' or not self.shuffle:
            return epoch_order(self.indices, self.seed, epoch, shuffle=self.shuffle,
                               rank=self.rank, world_size=self.world_size,
                               equal_shards=self.equal_shards)
        if self._blocks is None:  # the file's layout: read once
            reader = self.loader.reader
            pages = sample_pages(reader.alloc_table, int(reader.page_size),
                                 int(reader.num_samples))
            # a small file: at least a few blocks per rank
            self._blocks = blocks_of(np.asarray(self.indices), pages, 4 * self.world_size)
        return block_order(self._blocks, self.seed, epoch, rank=self.rank,
                           world_size=self.world_size, window=self.window,
                           equal_shards=self.equal_shards)
