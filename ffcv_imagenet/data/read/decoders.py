"""One-pass image decoders for the ``.beton`` image field.

ffcv's stock pipeline runs crop-decode, flip and normalisation as separate stages,
and normalisation in torch on the main thread costs more on a CPU than decoding
(measured in BENCHMARKS.md). These decoders do all of it per image inside one
numba-parallel loop:

1. choose the crop (random-resized or centre) in stored-image pixels;
2. decode only the rows and columns of the JPEG around the crop
   (:mod:`.jpeg_region`), at full size, or with ``dct_scaling`` at 1/2, 1/4 or 1/8
   scale when the crop would be shrunk by at least that factor anyway
   (libjpeg-turbo's scaled IDCT);
3. resize the crop to the output size with an area filter (:mod:`.resize`);
4. optionally flip horizontally (probability 1/2) and normalise to float32.

DCT scaling is off by default. The scaled IDCT is close to a mean of 2 x 2 (4 x 4,
8 x 8) pixels, and the area resize after it is a second box filter: the two blur more
than the one area resize of a full decode that ffcv's published results used (9-10%
less gradient energy on the crops it takes, for a train loader about 3% faster on 500 px
storage: BENCHMARKS.md, "Reduced-scale decoding").

Randomness (crop, flip) is reproducible: each image reseeds numba's per-thread
generator from its own index and the index that leads its batch (``images_per_batch``
says where batches start when one call decodes several). The order of an
epoch is itself seeded (``seed + epoch``), so the same seed gives the same
augmentations whatever thread decodes an image, and a new epoch gives new ones.

Output: (height, width, 3) per image, uint8 or float32 (normalised), which
``ToTensor`` + ``ToTorchImage`` turn into a channels-last (B, 3, H, W) view.
"""
from __future__ import annotations

from dataclasses import replace

import numba
import numpy as np
from numba import njit
from ffcv.fields.rgb_image import (IMAGE_MODES, ResizedCropRGBImageDecoder,
                                   get_center_crop, get_random_crop)
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler

from .jpeg_region import decode_region, region_of
from .resize import resize_kernel, scratch_sizes

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# libjpeg-turbo decodes directly at these reduced scales (denominators).
_MAX_DCT_SCALE = 8


@njit(cache=False, inline='always')
def sample_seed(lead_index, index):
    """A 32-bit seed from two sample indices (multiplicative hashing, so nearby
    indices get unrelated seeds)."""
    mixed = (np.uint64(lead_index) * np.uint64(2654435761)
             + np.uint64(index) * np.uint64(40503) + np.uint64(0x9E3779B9))
    return np.uint32(mixed % np.uint64(4294967291))


@njit(cache=False, inline='always')
def dct_denominator(crop_h, crop_w, out_h, out_w, largest):
    """The JPEG decoding scale 1/denominator (1, 2, 4 or 8, at most ``largest``: 1
    decodes at full size) for a crop of crop_h x crop_w stored-image pixels resized to
    out_h x out_w: the largest power-of-two shrink that still leaves the crop at least
    as large as the output, so that the resize after it only shrinks."""
    denom = 1
    while (denom < min(largest, _MAX_DCT_SCALE) and crop_h >= 2 * denom * out_h
           and crop_w >= 2 * denom * out_w):
        denom *= 2
    return denom


def largest_denominator(dct_scaling: bool) -> int:
    """The largest DCT denominator :func:`dct_denominator` may pick: 8 with
    ``dct_scaling``, else 1 (every JPEG decoded at full size)."""
    return _MAX_DCT_SCALE if dct_scaling else 1


@njit(cache=False, inline='always')
def decoded_crop(top, left, crop_h, crop_w, dec_h, dec_w, denom):
    """A crop (top, left, height, width) in stored-image pixels, its edges rounded to
    the nearest pixel of the dec_h x dec_w frame decoded at scale 1/denom; at least
    one pixel each way."""
    half = denom // 2
    bottom = min(dec_h, (top + crop_h + half) // denom)
    right = min(dec_w, (left + crop_w + half) // denom)
    top, left = (top + half) // denom, (left + half) // denom
    return top, left, max(1, bottom - top), max(1, right - left)


class FusedCropDecoder(ResizedCropRGBImageDecoder):
    """Crop + resize + optional flip + optional normalisation, decoded in one pass.

    Args:
        output_size: (height, width) in pixels. May be changed between epochs
            (a new size gets new buffers, and the generated code reads sizes from
            those buffers), which progressive resizing relies on.
        random_crop: True for random-resized-crop (``scale``, ``ratio`` as in
            torchvision), False for a centre crop of ``center_ratio`` x the shorter side.
        flip: flip each image horizontally with probability 1/2.
        mean, std: per-channel statistics on the 0-1 scale; when given, the output is
            float32 ``(pixel / 255 - mean) / std``, else uint8 pixels.
        dct_scaling: decode a JPEG crop at least 2, 4 or 8 times the output size on
            both sides at 1/2, 1/4 or 1/8 scale before resizing it (faster, blurrier);
            False decodes every crop at full size and resizes it once.

    ``images_per_batch``, set by the loader before it compiles: its batch size, when one
    call may decode several batches (0: each call is one batch).
    """

    def __init__(self, output_size: tuple[int, int], random_crop: bool = True,
                 scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 center_ratio: float = 224 / 256, flip: bool = False,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                 dct_scaling: bool = False):
        super().__init__(tuple(output_size))
        self.random_crop = random_crop
        self.scale = np.array(scale, dtype=np.float64)
        self.ratio = np.array(ratio, dtype=np.float64) if random_crop else float(center_ratio)
        self.flip = flip
        self.dct_scaling = bool(dct_scaling)
        self._made = None  # generate_code's last (memory reader, settings, function)
        self.images_per_batch = 0
        self.normalize = mean is not None
        if self.normalize:
            self.scale_px = (1.0 / (255.0 * np.asarray(std))).astype(np.float32)
            self.shift_px = (-np.asarray(mean) / np.asarray(std)).astype(np.float32)

    @property
    def get_crop_generator(self):
        return get_random_crop if self.random_crop else get_center_crop

    def declare_state_and_memory(self, previous_state):
        heights, widths = self.metadata['height'], self.metadata['width']
        max_pixels = np.uint64(int(heights.max()) * int(widths.max()) * 3)
        out_shape = (self.output_size[0], self.output_size[1], 3)
        out_dtype = np.dtype('<f4') if self.normalize else np.dtype('<u1')
        floats, indices = scratch_sizes(int(heights.max()), int(widths.max()),
                                        *self.output_size)
        state = replace(previous_state, jit_mode=True, shape=out_shape, dtype=out_dtype)
        return state, (AllocationQuery(out_shape, out_dtype),
                       AllocationQuery((max_pixels,), np.dtype('<u1')),
                       AllocationQuery((floats,), np.dtype('<f4')),
                       AllocationQuery((indices,), np.dtype('<u8')))

    def generate_code(self):
        # ffcv calls this for every epoch's buffer sizes, not only for the code it
        # compiles, and each call made new numba dispatchers: 1.7 ms per epoch, 3% of a
        # 500-image val epoch. The same loader (its reader) and settings get the
        # function made before; a new loader gets its own (no dispatcher is shared
        # between two loaders' threads).
        settings = (Compiler.is_enabled, Compiler.get_iterator(), self.random_crop,
                    self.flip, self.scale.tobytes(), np.asarray(self.ratio).tobytes(),
                    self.normalize, self.images_per_batch, self.dct_scaling)
        made = self._made
        if made is None or made[0] is not self.memory_read or made[1] != settings:
            made = self._made = (self.memory_read, settings, self._decode_function())
        return made[2]

    def _decode_function(self):
        jpg = IMAGE_MODES['jpg']
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        get_crop_c = Compiler.compile(self.get_crop_generator)
        # inlined into the loop: as a dispatcher of its own (ffcv's Compiler.compile), it
        # made numba's finalizer fail with a KeyError when a loader was freed while
        # another loader's epoch thread compiled (the bench's loaders, one after another)
        decode_region_c = (numba.njit(nogil=True, inline='always')(decode_region)
                           if Compiler.is_enabled else decode_region)
        resize_c = resize_kernel()
        scale, ratio = self.scale, self.ratio
        do_flip = self.flip
        reseed = self.random_crop or self.flip
        largest_denom = largest_denominator(self.dct_scaling)
        per_batch = self.images_per_batch
        mul = self.scale_px if self.normalize else np.ones(3, np.float32)
        add = self.shift_px if self.normalize else np.zeros(3, np.float32)

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, decoded_storage, float_scratch, index_scratch = my_storage
            out_h, out_w = destination.shape[1], destination.shape[2]
            # ffcv hands out working memory per image; each thread reuses one image's
            # (its pages stay warm in the cache, and the others are never touched, so
            # never faulted in) unless the batch has fewer slots than there are threads
            per_thread = numba.get_num_threads() <= len(decoded_storage)
            for k in my_range(len(batch_indices)):
                slot = np.int64(numba.get_thread_id()) if per_thread else np.int64(k)
                field = metadata[batch_indices[k]]
                if reseed:
                    lead = batch_indices[k - k % per_batch] if per_batch else batch_indices[0]
                    np.random.seed(sample_seed(lead, batch_indices[k]))
                image_data = mem_read(field['data_ptr'], storage_state)
                height, width = np.uint32(field['height']), np.uint32(field['width'])
                top, left, crop_h, crop_w = get_crop_c(height, width, scale, ratio)
                if field['mode'] == jpg:
                    denom = dct_denominator(crop_h, crop_w, out_h, out_w, largest_denom)
                    top, left, crop_h, crop_w = decoded_crop(
                        top, left, crop_h, crop_w, (height + denom - 1) // denom,
                        (width + denom - 1) // denom, denom)
                    # only the part of the frame around the crop is decoded
                    buf, geometry = decoded_storage[slot], np.empty(4, np.int64)
                    decode_region_c(image_data, buf, denom, top, left, crop_h, crop_w,
                                    geometry, False)
                    image = region_of(buf, geometry)
                    top, left = top - geometry[0], left - geometry[1]
                else:
                    image = image_data.reshape(height, width, 3)
                flipped = do_flip and np.random.random() < 0.5
                resize_c(image, top, left, crop_h, crop_w, destination[k], flipped,
                         mul, add, float_scratch[slot], index_scratch[slot])
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode
