"""Train and val loaders over a ``.beton``: normalised, channels-last image batches.

    loader = train_loader('train.beton', batch_size=256, resolution=160,
                          num_workers=12, device=torch.device('cuda:0'))
    for epoch in range(epochs):
        loader.resolution = resolution_for(epoch)   # progressive resizing
        for images, labels in loader:               # (B, 3, H, W), (B,) int64
            ...

Where the work happens:

* CPU device: crop, flip and normalisation run per image in the decoder's
  numba-parallel loop (see :mod:`ffcv_imagenet.data.read.decoders`), so the batch arrives as
  float32, already normalised.
* CUDA device: the decoder emits uint8 (a quarter of the bytes to copy), which is
  sent to the GPU without blocking and normalised there, in torch (ffcv's own
  ``NormalizeImage`` would need cupy on a GPU).
* ``decoder_dtype`` overrides the choice: ``torch.uint8`` (normalised afterwards in
  torch) or ``torch.float32`` (normalised in the decoder), on either device.

ffcv decodes each epoch in a thread of its own. CUDA's current device is per thread,
so that thread makes the loader's GPU current before anything else; otherwise its
stream switches would touch GPU 0 and give every rank a CUDA context there.

On the CPU the yielded tensors are views into ffcv's rotating buffers, which a CPU
loader keeps from one epoch to the next (:mod:`.ffcv_loader`): use a batch before
asking for the next few (``batches_ahead``), or clone it.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from functools import partial
from queue import Empty
from typing import Iterator

import torch
import torch.distributed as dist
from ffcv.fields.basics import IntDecoder
from ffcv.loader.epoch_iterator import EpochIterator
from ffcv.pipeline.operation import Operation
from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage

from .beton import BetonInfo, check_dataset
from .decoders import IMAGENET_MEAN, IMAGENET_STD, FusedCropDecoder
from .ffcv_loader import CPU_BATCHES_PER_LAUNCH, SetUpLoader
from .orders import ShardedOrder


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


def resolve_device(device: torch.device | str) -> torch.device:
    """``device`` with its GPU index filled in from the calling thread's current device
    (a bare 'cuda' means different GPUs in different threads)."""
    device = torch.device(device)
    if device.type == 'cuda' and device.index is None:
        return torch.device('cuda', torch.cuda.current_device())
    return device


def use_device(device: torch.device) -> None:
    """Makes ``device`` the calling thread's current CUDA device; nothing for a CPU."""
    if device.type == 'cuda':
        torch.cuda.set_device(device)


def build_pipelines(decoder: FusedCropDecoder, device: torch.device
                    ) -> dict[str, list[Operation]]:
    """ffcv pipelines for the 'image' and 'label' fields: images to (B, 3, H, W)
    channels-last views of the decoder's dtype, labels to (B,) int64, both copied to
    ``device`` (without blocking) when it is a GPU. Normalising uint8 images is left
    to the caller, in torch."""
    image_ops = [decoder, ToTensor()]
    # only the label axis: a batch of one must stay (1,), not become 0-d
    label_ops = [IntDecoder(), ToTensor(), Squeeze(1)]
    if device.type == 'cuda':
        image_ops.append(ToDevice(device, non_blocking=True))
        label_ops.append(ToDevice(device, non_blocking=True))
    image_ops.append(ToTorchImage(channels_last=True, convert_back_int16=False))
    return {'image': image_ops, 'label': label_ops}


def _pipelines(decoder: FusedCropDecoder, device: torch.device, info: BetonInfo
               ) -> dict[str, list[Operation] | None]:
    """:func:`build_pipelines`, with any other field of the file switched off (None),
    since ffcv would otherwise decode it and yield it too."""
    return {**{name: None for name in info.fields}, **build_pipelines(decoder, device)}


class ImageLoader:
    """Iterable of (images, labels) batches on ``device``.

    images: (B, 3, H, W) channels-last, ``dtype``, normalised with ImageNet mean/std;
    labels: (B,) int64. ``resolution`` (pixels, square) may be set between epochs. A
    batch may live in ffcv's reused buffers: clone it to keep it past the next one.
    ``batches_ahead``: batches decoded ahead of the consumer (one more waits in the
    decoding thread on a GPU; on the CPU up to ``CPU_BATCHES_PER_LAUNCH``, decoded
    together). Building one for an indexed GPU ('cuda:1') allocates nothing there:
    iterating does. The file is checked first (see :func:`check_dataset`;
    ``num_classes`` as there), so a bad one raises ``DatasetError``, not an error from
    inside ffcv; ``info`` holds what the check found.
    """

    def __init__(self, path: str | os.PathLike, decoder: FusedCropDecoder, *, batch_size: int,
                 num_workers: int, device: torch.device, order: ShardedOrder, seed: int,
                 in_memory: bool, drop_last: bool, dtype: torch.dtype, batches_ahead: int,
                 num_classes: int | None = None):
        self.info = check_dataset(path, num_classes)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device, self.dtype, self.decoder = resolve_device(device), dtype, decoder
        # everything but the batch size, to build ffcv's loader again when it changes
        # (with new pipeline lists: ffcv's loader takes its decoder out of them)
        on_cpu = self.device.type != 'cuda'
        common = partial(SetUpLoader, str(path), num_workers=num_workers,
                         os_cache=in_memory, order=order, seed=seed, drop_last=drop_last,
                         batches_ahead=batches_ahead,
                         thread_setup=partial(use_device, self.device), reuse_buffers=on_cpu,
                         batches_per_launch=CPU_BATCHES_PER_LAUNCH if on_cpu else 1)

        def make_loader(batch: int) -> SetUpLoader:
            decoder.images_per_batch = batch  # where each image's batch starts, for its seed
            return common(batch_size=batch, pipelines=_pipelines(decoder, self.device, self.info))
        self._make_loader = make_loader
        self.loader = self._make_loader(batch_size)
        self.batches_ahead = batches_ahead
        stats = torch.tensor([IMAGENET_MEAN, IMAGENET_STD]) * 255
        self._stats_cpu = (stats[0].view(1, 3, 1, 1), (1 / stats[1]).view(1, 3, 1, 1))
        self._stats = None  # (mean, 1 / std) on the device, from the first batch on
        # ffcv yields the fields in the order the file stores them
        names = [name for name in self.info.fields if name in ('image', 'label')]
        self._label_first = names == ['label', 'image']

    @property
    def num_workers(self) -> int:
        """Decoding threads."""
        return self.loader.num_workers

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
    def center_ratio(self) -> float:
        """Centre-crop side / shorter image side of a val loader."""
        if self.decoder.random_crop:
            raise AttributeError("a random-resized-crop loader has no centre-crop ratio")
        return self.decoder.ratio

    @center_ratio.setter
    def center_ratio(self, ratio: float) -> None:
        if self.decoder.random_crop:
            raise AttributeError("a random-resized-crop loader has no centre-crop ratio")
        if not 0 < ratio <= 1:
            raise ValueError(f"center_ratio must be in (0, 1], got {ratio}")
        if float(ratio) != self.decoder.ratio:
            self.decoder.ratio = float(ratio)
            # the decoder compiles the ratio in as a constant: have ffcv generate (and
            # numba compile, a few seconds) its code again at the next iteration
            self.loader.code = None

    @property
    def batch_size(self) -> int:
        """Images per batch (per rank). It may be set between epochs (staged resizing):
        ffcv's loader is then built again for it, its order and epoch kept, and
        compiles its pipeline once more on its first epoch."""
        return self.loader.batch_size

    @batch_size.setter
    def batch_size(self, images: int) -> None:
        images = int(images)
        if images < 1:
            raise ValueError(f"batch_size must be positive, got {images}")
        if images != self.loader.batch_size:
            epoch = self.loader.next_epoch
            self.loader = self._make_loader(images)
            self.loader.next_epoch = epoch

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

    @property
    def start_batch(self) -> int:
        """Batches of the next epoch to skip (0 = all of it): a run resumed in the
        middle of an epoch continues with the batches it had not trained on, the same
        images in the same order with the same augmentations."""
        return self.loader.start_batch

    @start_batch.setter
    def start_batch(self, batches: int) -> None:
        if not 0 <= batches <= len(self.loader):
            raise ValueError(f"start_batch must be in [0, {len(self.loader)}], got {batches}")
        self.loader.start_batch = int(batches)

    def __len__(self) -> int:
        """Batches the next iteration yields (``start_batch`` already left out)."""
        return len(self.loader) - self.loader.start_batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.loader:
            if self._label_first:
                images, labels = labels, images
            if images.dtype == torch.uint8:
                if self._stats is None:
                    self._stats = tuple(t.to(self.device) for t in self._stats_cpu)
                mean, inv_std = self._stats
                images = (images.float() - mean) * inv_std
            if images.dtype != self.dtype:
                images = images.to(self.dtype)
            yield images, labels.long()


def train_loader(path: str | os.PathLike, *, batch_size: int, resolution: int,
                 num_workers: int, device: torch.device | str = 'cpu',
                 in_memory: bool = True, distributed: bool = False,
                 rank: int | None = None, world_size: int | None = None, seed: int = 0,
                 dtype: torch.dtype = torch.float32, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), batches_ahead: int = 3,
                 decoder_dtype: torch.dtype | None = None,
                 num_classes: int | None = None, dct_scaling: bool = False,
                 order: str = 'random', order_window: int = 16) -> ImageLoader:
    """Random-resized-crop + flip batches of ``batch_size`` images per rank, in a new
    order every epoch (ffcv's QUASI_RANDOM is not supported distributed).

    Args:
        resolution: output side in pixels (change it later with ``loader.resolution``).
        num_workers: decoding threads.
        in_memory: True reads through the OS page cache (the file should fit in RAM);
            False reads each batch's images from the file, holding a few batches of
            them (:mod:`.sample_reads`).
        distributed: take rank and world size from the process group; or pass
            ``rank`` and ``world_size`` explicitly.
        seed: the order of epoch ``e`` is drawn from (``seed``, ``e``).
        order: ``'random'`` (the whole split permuted) or ``'blocks'`` (page-local:
            pages permuted and dealt to the ranks, samples shuffled within windows of
            ``order_window`` pages; for a file read from disk, see :mod:`.orders`).
        scale, ratio: random-resized-crop area fraction and aspect-ratio ranges.
        decoder_dtype: what the decoder emits: ``torch.uint8`` (normalised afterwards,
            in torch on ``device``) or ``torch.float32`` (normalised in the decoder);
            None: uint8 for a GPU, float32 for the CPU.
        num_classes: every stored label must be below it; None: below the length of
            the class list ``<path>.classes.json``, when there is one.
        dct_scaling: decode a JPEG crop at least 2, 4 or 8 times ``resolution`` on both
            sides at 1/2, 1/4 or 1/8 scale, then resize it: faster, but blurrier than
            the one area resize of a full decode (False, the default; see
            :mod:`.decoders`).
    Raises:
        DatasetError: ``path`` is missing, not a whole ``.beton`` with ``image`` and
            ``label`` fields, empty, or its labels or class list do not match.
    """
    rank, world_size = _rank_and_world(distributed, rank, world_size)
    sharded = ShardedOrder(shuffle=True, rank=rank, world_size=world_size,
                           equal_shards=world_size > 1, order=order, window=order_window)
    decoder = FusedCropDecoder((resolution, resolution), random_crop=True, scale=scale,
                               ratio=ratio, flip=True, dct_scaling=dct_scaling,
                               **_decoder_normalisation(device, decoder_dtype))
    return ImageLoader(path, decoder, batch_size=batch_size, num_workers=num_workers,
                       device=device, order=sharded, seed=seed, in_memory=in_memory,
                       drop_last=True, dtype=dtype, batches_ahead=batches_ahead,
                       num_classes=num_classes)


def val_loader(path: str | os.PathLike, *, batch_size: int, resolution: int,
               num_workers: int, device: torch.device | str = 'cpu', in_memory: bool = True,
               distributed: bool = False, rank: int | None = None,
               world_size: int | None = None, center_ratio: float = 224 / 256,
               dtype: torch.dtype = torch.float32, batches_ahead: int = 3,
               decoder_dtype: torch.dtype | None = None,
               num_classes: int | None = None, dct_scaling: bool = False) -> ImageLoader:
    """Centre-crop batches in file order: a crop of ``center_ratio`` x the shorter side,
    resized to ``resolution`` pixels. Every image is seen exactly once per epoch across
    ranks (no padding, last batch kept), so summed metrics are exact. Arguments as in
    :func:`train_loader`."""
    rank, world_size = _rank_and_world(distributed, rank, world_size)
    order = ShardedOrder(shuffle=False, rank=rank, world_size=world_size)
    decoder = FusedCropDecoder((resolution, resolution), random_crop=False,
                               center_ratio=center_ratio, dct_scaling=dct_scaling,
                               **_decoder_normalisation(device, decoder_dtype))
    return ImageLoader(path, decoder, batch_size=batch_size, num_workers=num_workers,
                       device=device, order=order, seed=0, in_memory=in_memory,
                       drop_last=False, dtype=dtype, batches_ahead=batches_ahead,
                       num_classes=num_classes)


def _decoder_normalisation(device: torch.device | str, decoder_dtype: torch.dtype | None
                           ) -> dict:
    """Decoder arguments: normalise in the decoder (float32 output) or not (uint8)."""
    if decoder_dtype is None:
        decoder_dtype = torch.uint8 if torch.device(device).type == 'cuda' else torch.float32
    if decoder_dtype not in (torch.uint8, torch.float32):
        raise ValueError(f"decoder_dtype must be torch.uint8 or torch.float32, "
                         f"got {decoder_dtype}")
    if decoder_dtype == torch.uint8:
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
    for thread in threading.enumerate():
        if isinstance(thread, EpochIterator) and thread not in started_before:
            thread.close()
            # a thread past its last batch waits, deaf to close(), to queue the end of
            # the epoch: emptying the queue lets it do so and end
            while thread.is_alive():
                try:
                    while True:
                        thread.output_queue.get_nowait()
                except Empty:
                    pass
                thread.join(timeout=0.05)


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
