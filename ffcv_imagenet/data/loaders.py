"""Train and val loaders over a ``.beton``: normalised, channels-last image batches.

    loader = train_loader('train.beton', batch_size=256, resolution=160,
                          num_workers=12, device=torch.device('cuda:0'))
    for epoch in range(epochs):
        loader.resolution = resolution_for(epoch)   # progressive resizing
        for images, labels in loader:               # (B, 3, H, W), (B,) int64
            ...

Where the work happens:

* CPU device: crop, flip and normalisation run per image in the decoder's
  numba-parallel loop (see :mod:`ffcv_imagenet.data.decoders`), so the batch arrives as
  float32, already normalised.
* CUDA device: the decoder emits uint8 (a quarter of the bytes to copy), which is
  sent to the GPU without blocking and normalised there.

On the CPU the yielded tensors are views into ffcv's rotating buffers: use a batch
before asking for the next few (``batches_ahead``), or clone it.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from ffcv.fields.basics import IntDecoder
from ffcv.loader import Loader
from ffcv.traversal_order.base import TraversalOrder
from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage

from .decoders import IMAGENET_MEAN, IMAGENET_STD, FusedCropDecoder


class ShardedOrder(TraversalOrder):
    """Each rank's share of one epoch: disjoint shards that together cover the split.

    ffcv's own distributed RANDOM order pads shards by repeating samples, and its
    QUASI_RANDOM order does not support distributed loading at all. Here the whole
    split is permuted with ``seed + epoch`` (the same on every rank) and rank ``r``
    takes every ``world_size``-th sample from position ``r``. With
    ``equal_shards`` the permutation is first cut to a multiple of ``world_size``
    (at most ``world_size - 1`` random samples sit out an epoch), so that every rank
    runs the same number of steps, which DDP needs.

    ffcv calls the instance with the loader to bind it, hence ``__call__``.
    """

    def __init__(self, loader: Loader | None = None, *, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, equal_shards: bool = False):
        self.shuffle, self.rank, self.world_size = shuffle, rank, world_size
        self.equal_shards = equal_shards
        if loader is not None:
            super().__init__(loader)

    def __call__(self, loader: Loader) -> 'ShardedOrder':
        return ShardedOrder(loader, shuffle=self.shuffle, rank=self.rank,
                            world_size=self.world_size, equal_shards=self.equal_shards)

    def sample_order(self, epoch: int) -> np.ndarray:
        order = self.indices
        if self.shuffle:
            order = np.random.default_rng(self.seed + epoch).permutation(order)
        if self.equal_shards:
            order = order[:len(order) - len(order) % self.world_size]
        return order[self.rank::self.world_size]


def _rank_and_world(distributed: bool, rank: int | None, world_size: int | None
                    ) -> tuple[int, int]:
    if rank is not None or world_size is not None:
        if rank is None or world_size is None or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, "
                             f"world_size={world_size}")
        return rank, world_size
    if distributed:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("distributed=True needs an initialised process group")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ImageLoader:
    """Iterable of (images, labels) batches on ``device``.

    images: (B, 3, H, W) channels-last, ``dtype``, normalised with ImageNet mean/std;
    labels: (B,) int64. ``resolution`` (pixels, square) may be set between epochs.
    """

    def __init__(self, path: str | os.PathLike, decoder: FusedCropDecoder, *, batch_size: int,
                 num_workers: int, device: torch.device, order: ShardedOrder, seed: int,
                 in_memory: bool, drop_last: bool, dtype: torch.dtype, batches_ahead: int):
        if not os.path.isfile(path):
            raise FileNotFoundError(f".beton file not found: {path}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device, self.dtype, self.decoder = torch.device(device), dtype, decoder
        on_cuda = self.device.type == 'cuda'
        image_ops = [decoder, ToTensor()]
        label_ops = [IntDecoder(), ToTensor(), Squeeze()]
        if on_cuda:
            image_ops.append(ToDevice(self.device, non_blocking=True))
            label_ops.append(ToDevice(self.device, non_blocking=True))
        image_ops.append(ToTorchImage(channels_last=True, convert_back_int16=False))
        self.loader = Loader(str(path), batch_size=batch_size, num_workers=num_workers,
                             os_cache=in_memory, order=order, seed=seed, drop_last=drop_last,
                             batches_ahead=batches_ahead,
                             pipelines={'image': image_ops, 'label': label_ops})
        self.batch_size = batch_size
        stats = torch.tensor([IMAGENET_MEAN, IMAGENET_STD], device=self.device) * 255
        self._mean = stats[0].view(1, 3, 1, 1)
        self._inv_std = (1 / stats[1]).view(1, 3, 1, 1)

    @property
    def resolution(self) -> int:
        """Output side length in pixels."""
        return self.decoder.output_size[0]

    @resolution.setter
    def resolution(self, pixels: int) -> None:
        pixels = int(pixels)
        if pixels < 8:
            raise ValueError(f"resolution must be at least 8 pixels, got {pixels}")
        self.decoder.output_size = (pixels, pixels)

    @property
    def epoch(self) -> int:
        """The epoch (0-based) whose order the next iteration yields; set it when
        resuming so that epoch ``e`` gets the same order as in an unbroken run."""
        return self.loader.next_epoch

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must not be negative, got {epoch}")
        self.loader.next_epoch = int(epoch)

    @property
    def num_samples(self) -> int:
        """Images this rank sees per epoch (before ``drop_last``)."""
        return len(self.loader.first_traversal_order)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.loader:
            if images.dtype == torch.uint8:
                images = (images.float() - self._mean) * self._inv_std
            if images.dtype != self.dtype:
                images = images.to(self.dtype)
            yield images, labels.long().reshape(-1)  # Squeeze makes a batch of 1 0-d


def train_loader(path: str | os.PathLike, *, batch_size: int, resolution: int,
                 num_workers: int, device: torch.device | str = 'cpu',
                 in_memory: bool = True, distributed: bool = False,
                 rank: int | None = None, world_size: int | None = None, seed: int = 0,
                 dtype: torch.dtype = torch.float32, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), batches_ahead: int = 3) -> ImageLoader:
    """Random-resized-crop + flip batches of ``batch_size`` images per rank, in a new
    random order every epoch (RANDOM order: QUASI_RANDOM is not supported distributed).

    Args:
        resolution: output side in pixels (change it later with ``loader.resolution``).
        num_workers: decoding threads.
        in_memory: True reads through the OS page cache (the file should fit in RAM).
        distributed: take rank and world size from the process group; or pass
            ``rank`` and ``world_size`` explicitly.
        seed: the order of epoch ``e`` is a permutation seeded with ``seed + e``.
        scale, ratio: random-resized-crop area fraction and aspect-ratio ranges.
    """
    rank, world_size = _rank_and_world(distributed, rank, world_size)
    order = ShardedOrder(shuffle=True, rank=rank, world_size=world_size,
                         equal_shards=world_size > 1)
    decoder = FusedCropDecoder((resolution, resolution), random_crop=True, scale=scale,
                               ratio=ratio,
                               flip=True, **_cpu_normalisation(device))
    return ImageLoader(path, decoder, batch_size=batch_size, num_workers=num_workers,
                       device=device, order=order, seed=seed, in_memory=in_memory,
                       drop_last=True, dtype=dtype, batches_ahead=batches_ahead)


def val_loader(path: str | os.PathLike, *, batch_size: int, resolution: int,
               num_workers: int, device: torch.device | str = 'cpu', in_memory: bool = True,
               distributed: bool = False, rank: int | None = None,
               world_size: int | None = None, center_ratio: float = 224 / 256,
               dtype: torch.dtype = torch.float32, batches_ahead: int = 3) -> ImageLoader:
    """Centre-crop batches in file order: a crop of ``center_ratio`` x the shorter side,
    resized to ``resolution`` pixels. Every image is seen exactly once per epoch across
    ranks (no padding, last batch kept), so summed metrics are exact."""
    rank, world_size = _rank_and_world(distributed, rank, world_size)
    order = ShardedOrder(shuffle=False, rank=rank, world_size=world_size)
    decoder = FusedCropDecoder((resolution, resolution), random_crop=False,
                               center_ratio=center_ratio, **_cpu_normalisation(device))
    return ImageLoader(path, decoder, batch_size=batch_size, num_workers=num_workers,
                       device=device, order=order, seed=0, in_memory=in_memory,
                       drop_last=False, dtype=dtype, batches_ahead=batches_ahead)


def _cpu_normalisation(device: torch.device | str) -> dict:
    """Decoder arguments: normalise in the decoder on the CPU, on the GPU otherwise."""
    if torch.device(device).type == 'cuda':
        return {}
    return {'mean': IMAGENET_MEAN, 'std': IMAGENET_STD}


def _endless(loader) -> Iterator:
    """The loader's batches, epoch after epoch (small datasets have few per epoch)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError(f"the loader gives no full batch of {loader.batch_size}")


def _close_epoch_threads(started_before: set) -> None:
    # an abandoned ffcv epoch keeps its thread (and batch buffers) waiting forever to
    # hand over the next batch; ImageLoader hides the iterator, so find the ones we began.
    # Joining lets a batch in progress finish before the loader's compiled code is freed.
    from ffcv.loader.epoch_iterator import EpochIterator
    for thread in threading.enumerate():
        if isinstance(thread, EpochIterator) and thread not in started_before:
            thread.close()
            thread.join()


@contextmanager
def endless_batches(loader: ImageLoader) -> Iterator[Iterator]:
    """Yields an iterator over the loader's batches, epoch after epoch, for code that
    counts steps rather than epochs (benchmarks, the LR finder); on exit it stops the
    epoch left unfinished, so no decoding thread outlives it.
    Raises:
        ValueError: the loader gives no full batch.
    """
    threads, batches = set(threading.enumerate()), _endless(loader)
    try:
        yield batches
    finally:
        batches.close()
        _close_epoch_threads(threads)
