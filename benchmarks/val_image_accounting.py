"""Where a val image's time goes, per image on one thread: decoding the whole frame
(the ceiling's call), decoding only the region around the crop (the loaders' call),
and the resize after it, uint8 and float32.

    python benchmarks/val_image_accounting.py [--beton data/betons/val.beton]

The ``.beton``'s JPEGs are loaded into memory; the val loader's centre crops at
160 px are planned as the ceiling plans them (``decode_ceiling.val_plan``); one numba
loop over the set, no ffcv, decodes each crop's region and resizes it into an output
rotating over a batch's 64 images, as the loader writes them. Each of 'ceiling'
(``decode_ceiling.decode_pass``, 1 thread), 'region' and 'region + resize' is timed 7
times in turn; prints the best µs per image of each, per output dtype, and the resize
as the difference of the last two.

Needs the val ``.beton`` of ``make demo`` (or ``make data/betons/val.beton``).
"""
import argparse
import time

import numpy as np
from numba import njit

from ffcv_imagenet.data.read.decoders import IMAGENET_MEAN, IMAGENET_STD
from ffcv_imagenet.data.read.jpeg_region import decode_region, region_of
from ffcv_imagenet.data.read.resize import resize_kernel, scratch_sizes
from ffcv_imagenet.tools.bench import decode_ceiling as dc

parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
parser.add_argument('--beton', default='data/betons/val.beton')
args = parser.parse_args()

jpegs = dc.load_jpegs(args.beton)
positions, denoms, boxes = dc.val_plan(jpegs, 160)
n = len(positions)
dec = njit(nogil=True, inline='always')(decode_region)
rk = resize_kernel()


@njit(nogil=True)
def loop(data, offsets, sizes, positions, boxes, buf, scratch, columns, out, mul, add, resize):
    geometry = np.empty(4, np.int64)
    for i in range(len(positions)):
        j = positions[i]
        top, left, crop_h, crop_w = boxes[i]
        dec(data[offsets[j]:offsets[j] + sizes[j]], buf, 1, top, left, crop_h, crop_w,
            geometry, False)
        if resize:
            rk(region_of(buf, geometry), top - geometry[0], left - geometry[1], crop_h,
               crop_w, out[i % out.shape[0]], False, mul, add, scratch, columns)


buf = np.empty(int((jpegs.heights * jpegs.widths).max()) * 3, np.uint8)
floats, indices = scratch_sizes(int(jpegs.heights.max()), int(jpegs.widths.max()), 160, 160)
scratch, columns = np.empty(floats, np.float32), np.empty(indices, np.uint64)
mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
for dtype, mul, add in ((np.uint8, np.ones(3, np.float32), np.zeros(3, np.float32)),
                        (np.float32, (1 / (255 * std)).astype(np.float32),
                         (-mean / std).astype(np.float32))):
    out = np.zeros((64, 160, 160, 3), dtype)  # a batch's worth of outputs, as in the loader
    loop_args = (jpegs.data, jpegs.offsets, jpegs.sizes, positions, boxes, buf, scratch,
                 columns, out, mul, add)
    loop(*loop_args, True)  # compiles
    dc.decode_pass(jpegs, (positions, denoms, boxes), 1)
    best = {}
    for _ in range(7):
        for name in ('ceiling', 'region', 'region + resize'):
            start = time.perf_counter()
            if name == 'ceiling':
                dc.decode_pass(jpegs, (positions, denoms, boxes), 1)
            else:
                loop(*loop_args, name != 'region')
            best[name] = min(best.get(name, 1e9), (time.perf_counter() - start) / n * 1e6)
    print(f"{dtype.__name__}: " + ', '.join(f"{k} {v:.1f}" for k, v in best.items())
          + f" µs per image; resize {best['region + resize'] - best['region']:.1f} µs")
