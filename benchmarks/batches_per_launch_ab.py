"""A/B of batches decoded per launch of the pipeline, in one process: loaders alike
but for ``batches_per_launch``, timed an epoch each in turn.

    python benchmarks/batches_per_launch_ab.py BATCH f32|u8 val|train COUNTS [BETON]
    e.g. python benchmarks/batches_per_launch_ab.py 64 f32 val 1,2,4

One loader per count in COUNTS (comma-separated), all reading BETON (default
``data/betons/train.beton``: 3,000 images per epoch, for the val loader too) at
160 px on 2 decoding threads, through ``ImageLoader`` (float32: normalised in the
decoder; uint8: normalised in torch after it, on this thread). Each runs one untimed
epoch (compilation), then 4 rounds time one epoch of each in turn. Prints each
count's median images/sec.

Needs the ``.betons`` of ``make demo`` (or ``make data/betons/train.beton``).
"""
import sys
import time

import torch

from ffcv_imagenet.data.read.loaders import train_loader, val_loader

if len(sys.argv) not in (5, 6):
    sys.exit(__doc__.split('\n\n')[1])
batch, kind, ks = int(sys.argv[1]), sys.argv[3], [int(k) for k in sys.argv[4].split(',')]
beton = sys.argv[5] if len(sys.argv) == 6 else 'data/betons/train.beton'
dtype = torch.float32 if sys.argv[2] == 'f32' else torch.uint8
make = val_loader if kind == 'val' else train_loader
loaders = {}
for k in ks:
    loaders[k] = make(beton, batch_size=batch, resolution=160, num_workers=2,
                      decoder_dtype=dtype)
    loaders[k].loader.batches_per_launch = k
    for _ in loaders[k]:  # compiles
        pass
speeds = {k: [] for k in ks}
for _ in range(4):
    for k in ks:
        start, n = time.perf_counter(), 0
        for images, labels in loaders[k]:
            n += len(images)
        speeds[k].append(n / (time.perf_counter() - start))
for k in ks:
    print(k, sorted(speeds[k])[len(speeds[k]) // 2])
