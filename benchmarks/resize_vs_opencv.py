"""Microseconds per resize of one crop to 160 x 160 px: OpenCV's area filter
(``INTER_AREA``, what ffcv's stock decoder uses) and bilinear (``INTER_LINEAR``)
beside the loaders' own area filter (``resize.resize_kernel``), one thread.

    python benchmarks/resize_vs_opencv.py [--calls 2000] [--best-of 3]

A smooth 320 x 320 RGB image (gradients); crops of 230 x 200, 250 x 250 and
300 x 280 px (shrunk by a factor that is not a whole number: OpenCV's generic,
table-driven area path), 120 x 130 px (enlarged) and 160 x 160 px (no scaling).
``cv2.resize`` of the crop view, ``cv2.setNumThreads(1)``; the own filter writes
uint8 levels, flip off. Each figure is the best of ``--best-of`` timings of
``--calls`` calls, after one untimed call (compilation). Needs only the project's
venv (OpenCV comes with ffcv's dependencies).
"""
import argparse
import time

import cv2
import numpy as np

from ffcv_imagenet.data.read.resize import resize_kernel, scratch_sizes

parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
parser.add_argument('--calls', type=int, default=2000)
parser.add_argument('--best-of', type=int, default=3)
args = parser.parse_args()

cv2.setNumThreads(1)
y, x = np.mgrid[0:320, 0:320].astype(np.float32)
image = np.stack([x * 0.7, y * 0.7, (x + y) * 0.35], axis=-1).astype(np.uint8)
kernel = resize_kernel()
out = np.empty((160, 160, 3), np.uint8)
floats, indices = scratch_sizes(320, 320, 160, 160)
scratch, columns = np.empty(floats, np.float32), np.empty(indices, np.uint64)
mul, add = np.ones(3, np.float32), np.zeros(3, np.float32)


def best(call):
    call()
    times = []
    for _ in range(args.best_of):
        start = time.perf_counter()
        for _ in range(args.calls):
            call()
        times.append((time.perf_counter() - start) / args.calls * 1e6)
    return min(times)


print('| crop (h x w) | OpenCV INTER_AREA | OpenCV INTER_LINEAR | own area filter |')
print('|---|---|---|---|')
for h, w in ((230, 200), (250, 250), (300, 280), (120, 130), (160, 160)):
    crop = image[10:10 + h, 12:12 + w]
    area = best(lambda: cv2.resize(crop, (160, 160), interpolation=cv2.INTER_AREA))
    linear = best(lambda: cv2.resize(crop, (160, 160), interpolation=cv2.INTER_LINEAR))
    own = best(lambda: kernel(image, 10, 12, h, w, out, False, mul, add, scratch, columns))
    print(f'| {h} x {w} | {area:.0f} µs | {linear:.0f} µs | {own:.0f} µs |')
