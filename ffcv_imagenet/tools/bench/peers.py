"""The other fast loaders this project's loader is timed beside (``bench loader --peers``).

* ffcv's stock ImageNet train pipeline on the same ``.beton``: its
  ``RandomResizedCropRGBImageDecoder`` (full-size JPEG decode, OpenCV area resize),
  ``RandomHorizontalFlip`` and ``NormalizeImage`` (a lookup table, float32), each a
  separate stage, as ffcv's own ImageNet example chains them for the CPU.
* NVIDIA DALI's CPU pipeline on the same JPEG bytes the ``.beton`` stores (read into
  memory once, as :func:`.decode_ceiling.load_jpegs` reads them for the ceiling):
  ``decoders.image_random_crop`` (libjpeg-turbo, decoding only the crop's region),
  ``resize`` (its default antialiased linear filter), ``crop_mirror_normalize``
  (random flip, float32), on ``num_threads`` threads, handed to torch through DALI's
  own PyTorch iterator. DALI is optional (``pip install nvidia-dali-cuda120``; its
  CPU operators run without a GPU): :func:`dali_available` says whether it imports.

Both yield (images, labels) batches: float32 (B, 3, H, W) images normalised with the
ImageNet statistics, int64 (B,) labels; an iteration is one epoch, in a new random order.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Iterator

import numpy as np
import torch

from .decode_ceiling import StoredJpegs
from ...data.read.decoders import IMAGENET_MEAN, IMAGENET_STD

DALI_PACKAGE = 'nvidia-dali-cuda120'


def ffcv_stock_loader(path: str | os.PathLike, *, batch_size: int, resolution: int,
                      num_workers: int, seed: int = 0):
    """ffcv's own random-resized-crop + flip + normalise train pipeline on the CPU,
    ``resolution`` pixels square, ``batch_size`` images per batch, in a random order
    every epoch (an ``ffcv.loader.Loader``)."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import (NormalizeImage, RandomHorizontalFlip, Squeeze, ToTensor,
                                 ToTorchImage)
    mean, std = (np.array(stats) * 255 for stats in (IMAGENET_MEAN, IMAGENET_STD))
    image = [RandomResizedCropRGBImageDecoder((resolution, resolution)),
             RandomHorizontalFlip(), NormalizeImage(mean, std, np.float32),
             ToTensor(), ToTorchImage()]
    return Loader(str(path), batch_size=batch_size, num_workers=num_workers,
                  order=OrderOption.RANDOM, drop_last=True, os_cache=True, seed=seed,
                  pipelines={'image': image, 'label': [IntDecoder(), ToTensor(), Squeeze()]})


def dali_available() -> bool:
    """Whether NVIDIA DALI imports here (it is not a dependency of this project)."""
    return importlib.util.find_spec('nvidia') is not None and \
        importlib.util.find_spec('nvidia.dali') is not None


class _EpochOfBatches:
    """DALI ``external_source`` callback: the JPEG bytes and labels of one batch at a
    time, in a new random order every epoch; StopIteration ends an epoch."""

    def __init__(self, jpegs: StoredJpegs, labels: np.ndarray, batch_size: int, seed: int):
        self.jpegs, self.labels, self.batch_size = jpegs, labels, batch_size
        self.rng = np.random.default_rng(seed)
        self._start_epoch()

    def _start_epoch(self) -> None:
        self.order = self.rng.permutation(len(self.jpegs.sizes))
        self.next = 0

    def __call__(self):
        if self.next + self.batch_size > len(self.order):  # the last partial batch dropped
            self._start_epoch()
            raise StopIteration
        picked = self.order[self.next:self.next + self.batch_size]
        self.next += self.batch_size
        data, offsets, sizes = self.jpegs.data, self.jpegs.offsets, self.jpegs.sizes
        return ([data[offsets[j]:offsets[j] + sizes[j]] for j in picked],
                [self.labels[j:j + 1] for j in picked])


def dali_cpu_loader(jpegs: StoredJpegs, labels: np.ndarray, *, batch_size: int,
                    resolution: int, num_workers: int, seed: int = 0
                    ) -> 'DaliBatches':
    """DALI's CPU random-resized-crop + flip + normalise pipeline over ``jpegs`` (their
    ``labels``: (n,) int64, one per JPEG, in the same order), ``resolution`` pixels
    square, on ``num_workers`` threads.
    Raises:
        ImportError: DALI is not installed (see :data:`DALI_PACKAGE`).
    """
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    @pipeline_def(batch_size=batch_size, num_threads=num_workers, device_id=None, seed=seed)
    def pipeline():
        encoded, label = fn.external_source(
            source=_EpochOfBatches(jpegs, labels, batch_size, seed), num_outputs=2,
            dtype=[types.UINT8, types.INT64])
        images = fn.decoders.image_random_crop(encoded, device='cpu', output_type=types.RGB,
                                               random_area=[0.08, 1.0],
                                               random_aspect_ratio=[3 / 4, 4 / 3])
        images = fn.resize(images, resize_x=resolution, resize_y=resolution)
        images = fn.crop_mirror_normalize(
            images, mirror=fn.random.coin_flip(), dtype=types.FLOAT, output_layout='CHW',
            mean=[m * 255 for m in IMAGENET_MEAN], std=[s * 255 for s in IMAGENET_STD])
        return images, label

    pipe = pipeline()
    pipe.build()
    return DaliBatches(DALIGenericIterator(pipe, ['images', 'labels'],
                                           last_batch_policy=LastBatchPolicy.DROP))


class DaliBatches:
    """A DALI iterator as an iterable of epochs of (images, labels) torch batches."""

    def __init__(self, iterator):
        self.iterator = iterator
        self._ended = False

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # reset when the next epoch is asked for, not when one ends: DALI starts
        # decoding the next epoch's first batches on reset, which after an epoch would
        # run in the background while the benchmark times another pipeline
        if self._ended:
            self.iterator.reset()
        for (batch,) in self.iterator:  # one pipeline: a list of one dict
            yield batch['images'], batch['labels'].view(-1)
        self._ended = True
