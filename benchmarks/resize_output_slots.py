"""What writing the output costs the resize: 40 val crops resized, one thread, the
output rotating over 1, 64 or 576 image slots (576 = 9 slots of a batch of 64, about
what a loader cycles through), in uint8 and float32.

    python benchmarks/resize_output_slots.py [--beton data/betons/val.beton]

The val loader's centre crops at 160 px of the first 40 images whose crop is 150 px
or more are decoded once (crop regions, as the loader decodes them); then one numba
loop resizes them 20 times over into 160 x 160 x 3 outputs, moving to the next slot
after each image. Prints, per dtype and slot count, the best µs per image of 5 such
loops. With 1 slot the output stays in cache; with 576 float32 slots (177 MB) it does
not, which is the float32 path's memory cost.

Needs the val ``.beton`` of ``make demo`` (or ``make data/betons/val.beton``).
"""
import argparse
import time

import numpy as np
from numba import njit

import ffcv_imagenet.data.read.resize as R
from ffcv_imagenet.data.read.decoders import IMAGENET_MEAN, IMAGENET_STD
from ffcv_imagenet.data.read.jpeg_region import decode_region, region_of
from ffcv_imagenet.tools.bench import decode_ceiling as dc

parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
parser.add_argument('--beton', default='data/betons/val.beton')
args = parser.parse_args()

jpegs = dc.load_jpegs(args.beton)
positions, denoms, boxes = dc.val_plan(jpegs, 160)
n, dec, rk = len(positions), njit(nogil=True)(decode_region), R.resize_kernel()
bufs = np.empty((n, int((jpegs.heights * jpegs.widths).max()) * 3), np.uint8)
geos = np.empty((n, 4), np.int64)
for i in range(n):
    j = positions[i]
    dec(jpegs.data[jpegs.offsets[j]:jpegs.offsets[j] + jpegs.sizes[j]], bufs[i], 1,
        *boxes[i], geos[i], False)


@njit(nogil=True)
def loop(bufs, geos, boxes, scratch, columns, out, mul, add, resize, reps, idx, slots):
    s = 0
    for r in range(reps):
        for i in idx:
            top, left, crop_h, crop_w = boxes[i]
            g = geos[i]
            resize(region_of(bufs[i], g), top - g[0], left - g[1], crop_h, crop_w,
                   out[s], False, mul, add, scratch, columns)
            s = (s + 1) % slots


floats, indices = R.scratch_sizes(int(jpegs.heights.max()), int(jpegs.widths.max()), 160, 160)
scratch, columns = np.empty(floats, np.float32), np.empty(indices, np.uint64)
mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
idx = np.nonzero(boxes[:, 2] >= 150)[0][:40]
for dtype, mul, add in ((np.uint8, np.ones(3, np.float32), np.zeros(3, np.float32)),
                        (np.float32, (1 / (255 * std)).astype(np.float32),
                         (-mean / std).astype(np.float32))):
    out = np.ones((576, 160, 160, 3), dtype)
    loop(bufs, geos, boxes, scratch, columns, out, mul, add, rk, 1, idx, 1)  # compiles
    for slots in (1, 64, 576):
        best = 1e9
        for _ in range(5):
            start = time.perf_counter()
            loop(bufs, geos, boxes, scratch, columns, out, mul, add, rk, 20, idx, slots)
            best = min(best, (time.perf_counter() - start) / (20 * len(idx)) * 1e6)
        print(dtype.__name__, slots, f"{best:.1f} us/image")
