"""The decoding ceiling of the loaders: every stored JPEG decoded, and nothing else.

A loader cannot deliver images faster than libjpeg-turbo decodes them on the same
threads. This module measures that rate on a ``.beton``'s own images:

1. :func:`load_jpegs` copies every JPEG-mode image's compressed bytes into one
   buffer in memory (raw-pixel images are left out and counted: they need no
   decoding);
2. :func:`val_plan` / :func:`train_plan` give, per image, the DCT scale
   (1/1, 1/2, 1/4 or 1/8) the loader's decoder chooses for its crop, and the crop in
   pixels of the frame decoded at that scale: the centre crop of the val loader, or
   the random crop the train loader draws in a given epoch (same order, batches,
   per-image seeds and crop function, so the same crops);
3. :func:`decode_pass` decodes the whole frame of every planned image at that scale
   with ffcv's ``imdecode`` in one numba-parallel loop on ``workers`` threads, into
   per-thread scratch that is thrown away. There is no ffcv ``Loader`` and no Python
   work per image: one numba call per pass.

The loader does more per image (crop, resize, flip, normalisation, batching), so its
images/sec over this rate is its share of the ceiling. The ceiling stays the
full-frame decode; ``decode_pass(region=True)`` times, beside it, what the loader's
decoder does instead: only the part of each frame around its crop
(:mod:`.jpeg_region`).
"""
from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numba
import numpy as np
from numba import njit, prange

from ...data.read.beton import read_image_table
from ...data.read.decoders import (dct_denominator, decoded_crop, largest_denominator,
                                   sample_seed)
from ...data.read.jpeg_region import decode_region
from ...data.read.orders import epoch_order
# after the read side's modules, which import ffcv the fast way (data/ffcv_import.py)
from ffcv.fields.rgb_image import IMAGE_MODES, get_center_crop, get_random_crop  # noqa: I001
from ffcv.libffcv import imdecode

# compiled as ffcv's Compiler compiles the decoder's crop functions (fastmath, numpy
# error model), so that the same random draws give the same crops
_JIT = dict(fastmath=True, error_model='numpy', nogil=True)
_random_crop = njit(**_JIT)(get_random_crop)
_center_crop = njit(**_JIT)(get_center_crop)
# inlined, as in the loader's decoder: called as dispatchers, their table of signatures
# could change while the pass was typed, after the loader's tests had compiled and freed
# copies of their own (numba 0.60-0.68: a KeyError from type inference)
_imdecode = njit(nogil=True, inline='always')(imdecode)
_decode_region = njit(nogil=True, inline='always')(decode_region)


class Plan(NamedTuple):
    """The images of one decoding pass, in order: ``positions`` (n,) int64 into a
    :class:`StoredJpegs`, ``denoms`` (n,) int64 DCT denominators, and ``boxes``
    (n, 4) int64, each image's crop (top, left, height, width) in pixels of its frame
    decoded at 1/denom."""
    positions: np.ndarray
    denoms: np.ndarray
    boxes: np.ndarray


@dataclass(frozen=True)
class StoredJpegs:
    """The JPEG-mode images of a ``.beton``, their compressed bytes in one buffer.

    data: (total bytes,) uint8, the images back to back in file order;
    offsets, sizes: (n,) int64, where image ``j``'s bytes lie in ``data`` (bytes);
    heights, widths: (n,) int64, its stored size in pixels;
    positions: (num_samples,) int64, sample id -> ``j``, or -1 for a raw-pixel image;
    raw_images: how many images the file stores as raw pixels (never decoded here).
    """
    data: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    heights: np.ndarray
    widths: np.ndarray
    positions: np.ndarray
    raw_images: int

    @property
    def num_samples(self) -> int:
        """Images in the file, raw-pixel ones included."""
        return len(self.positions)


def load_jpegs(path: str | os.PathLike) -> StoredJpegs:
    """Reads the compressed bytes of every JPEG image of the ``.beton`` at ``path``
    (exactly the bytes ffcv's reader hands the decoder) into memory: as much RAM as
    the file's JPEG data.
    Raises:
        DatasetError: the file is not a whole ``.beton`` (see ``check_beton``).
    """
    table = read_image_table(path)
    ids = np.flatnonzero(table['mode'] == IMAGE_MODES['jpg'])
    sizes = table['size'][ids].astype(np.int64)
    offsets = np.zeros(len(ids), dtype=np.int64)
    np.cumsum(sizes[:-1], out=offsets[1:])
    data = np.empty(int(sizes.sum()), dtype=np.uint8)
    source = np.memmap(path, dtype=np.uint8, mode='r')
    for start, ptr, size in zip(offsets.tolist(), table['data_ptr'][ids].tolist(),
                                sizes.tolist()):
        data[start:start + size] = source[ptr:ptr + size]
    del source
    positions = np.full(len(table), -1, dtype=np.int64)
    positions[ids] = np.arange(len(ids))
    return StoredJpegs(data, offsets, sizes, table['height'][ids].astype(np.int64),
                       table['width'][ids].astype(np.int64), positions,
                       raw_images=len(table) - len(ids))


@njit(**_JIT)
def _scale_and_box(height, width, crop, out_h, out_w, largest, denoms, boxes, i):
    # the decoder's choice of scale and its rounding of the crop to decoded pixels
    top, left, crop_h, crop_w = crop
    denom = dct_denominator(crop_h, crop_w, out_h, out_w, largest)
    denoms[i] = denom
    box = decoded_crop(top, left, crop_h, crop_w, (height + denom - 1) // denom,
                       (width + denom - 1) // denom, denom)
    for k in range(4):
        boxes[i, k] = box[k]


@njit(**_JIT)
def _center_plan(heights, widths, center_ratio, out_h, out_w, largest):
    denoms = np.ones(len(heights), dtype=np.int64)
    boxes = np.zeros((len(heights), 4), dtype=np.int64)
    scale = np.zeros(2)  # unused by the centre crop, as in the decoder
    for j in range(len(heights)):
        height, width = np.uint32(heights[j]), np.uint32(widths[j])
        crop = _center_crop(height, width, scale, center_ratio)
        _scale_and_box(height, width, crop, out_h, out_w, largest, denoms, boxes, j)
    return denoms, boxes


def val_plan(jpegs: StoredJpegs, resolution: int, center_ratio: float = 224 / 256,
             dct_scaling: bool = False) -> Plan:
    """Every JPEG image in file order (the val loader's order) with the DCT
    denominator the val loader's decoder (with ``dct_scaling`` as given to it; off:
    1 for every image) picks for its centre crop of ``center_ratio`` x the shorter
    side, resized to ``resolution`` pixels, and that crop."""
    denoms, boxes = _center_plan(jpegs.heights, jpegs.widths, float(center_ratio),
                                 resolution, resolution, largest_denominator(dct_scaling))
    return Plan(np.arange(len(jpegs.heights), dtype=np.int64), denoms, boxes)


@njit(**_JIT)
def _random_plan(order, batch_size, positions, heights, widths, scale, ratio, out_h,
                 out_w, largest):
    # the decoder reseeds per image from the id leading its batch and its own id, so
    # each image's crop depends only on those two, never on threads or other images
    denoms = np.zeros(len(order), dtype=np.int64)
    boxes = np.zeros((len(order), 4), dtype=np.int64)
    for i in range(len(order)):
        j = positions[order[i]]
        if j < 0:  # raw pixels: not decoded
            continue
        np.random.seed(sample_seed(order[i - i % batch_size], order[i]))
        height, width = np.uint32(heights[j]), np.uint32(widths[j])
        crop = _random_crop(height, width, scale, ratio)
        _scale_and_box(height, width, crop, out_h, out_w, largest, denoms, boxes, i)
    return denoms, boxes


def train_plan(jpegs: StoredJpegs, resolution: int, epoch: int, *, batch_size: int,
               seed: int = 0, scale: tuple[float, float] = (0.08, 1.0),
               ratio: tuple[float, float] = (3 / 4, 4 / 3), dct_scaling: bool = False
               ) -> Plan:
    """The JPEG images the train loader (one rank, ``seed``, ``batch_size``, last
    partial batch dropped, ``dct_scaling`` as given to it) decodes in ``epoch``, in
    its order, with the DCT denominator its decoder picks for the random crop it
    draws for each, resized to ``resolution`` pixels, and that crop."""
    order = epoch_order(np.arange(jpegs.num_samples, dtype=np.uint64), seed, epoch)
    order = order[:len(order) - len(order) % batch_size]  # drop_last
    denoms, boxes = _random_plan(order, batch_size, jpegs.positions, jpegs.heights,
                                 jpegs.widths, np.array(scale, dtype=np.float64),
                                 np.array(ratio, dtype=np.float64), resolution, resolution,
                                 largest_denominator(dct_scaling))
    positions = jpegs.positions[order]
    keep = positions >= 0
    return Plan(positions[keep], denoms[keep], boxes[keep])


@njit(parallel=True, nogil=True)
def _decode_all(data, offsets, sizes, heights, widths, positions, denoms, boxes, scratch,
                status, sums, checksum, region):
    for i in prange(len(positions)):
        j, denom = positions[i], denoms[i]
        buf = scratch[numba.get_thread_id()]
        height, width = np.uint32(heights[j]), np.uint32(widths[j])
        source = data[offsets[j]:offsets[j] + sizes[j]]
        if region:  # the loader's decoder's call: the part of the frame around the crop
            geometry = np.empty(4, np.int64)
            top, left, crop_h, crop_w = boxes[i]
            status[i] = _decode_region(source, buf, denom, top, left, crop_h, crop_w,
                                       geometry, False)
            count = geometry[2] * geometry[3] * 3
        else:  # the whole frame at scale 1/denom, by ffcv's imdecode
            status[i] = _imdecode(source, buf, height, width, height, width, 0, 0, 1,
                                  denom, False, False)
            count = ((height + denom - 1) // denom) * ((width + denom - 1) // denom) * 3
        if checksum:
            total = 0
            for b in range(count):
                total += buf[b]
            sums[i] = total


def decode_pass(jpegs: StoredJpegs, plan: Plan, workers: int, checksum: bool = False,
                region: bool = False) -> tuple[float, np.ndarray]:
    """Decodes the images of ``plan`` on ``workers`` numba threads, each whole frame
    (the ceiling) or, with ``region``, only the part around its crop, and returns
    (seconds, sums): with ``checksum``, sums[i] is the sum of the decoded pixel bytes
    of the plan's i-th image (extra work: for tests), else zeros. The first call
    includes numba's compilation.
    Raises:
        RuntimeError: libjpeg-turbo failed on an image.
    """
    positions, denoms, boxes = plan
    before = numba.get_num_threads()
    numba.set_num_threads(workers)
    try:
        # one scratch frame per thread, large enough for any image at full scale
        frame = int((jpegs.heights * jpegs.widths).max(initial=0)) * 3
        scratch = np.empty((numba.get_num_threads(), frame), dtype=np.uint8)
        status = np.zeros(len(positions), dtype=np.int32)
        sums = np.zeros(len(positions), dtype=np.int64)
        start = time.perf_counter()
        _decode_all(jpegs.data, jpegs.offsets, jpegs.sizes, jpegs.heights, jpegs.widths,
                    positions, denoms, boxes, scratch, status, sums, checksum, region)
        seconds = time.perf_counter() - start
    finally:
        numba.set_num_threads(before)
    if status.any():
        raise RuntimeError(f"libjpeg-turbo failed on {np.count_nonzero(status)} of "
                           f"{len(positions)} images")
    return seconds, sums


def next_pass(jpegs: StoredJpegs, plan_for: Callable[[int], Plan], workers: int,
              region: bool = False) -> Callable[[], float]:
    """A timer of passes: its ``p``-th call (from 0) decodes ``plan_for(p)`` (computed
    before the clock starts) with :func:`decode_pass`, whole frames or, with
    ``region``, the parts around the crops, and returns its images/sec."""
    passes = itertools.count()

    def run() -> float:
        plan = plan_for(next(passes))
        seconds, _ = decode_pass(jpegs, plan, workers, region=region)
        return len(plan.positions) / seconds
    return run

