"""The epoch thread's time, split per batch: the compiled pipeline, ffcv's Python work
around it, and the queue and loop, with one batch per launch (ffcv's own loop).

    python benchmarks/epoch_thread_split.py BATCH f32|u8 [BETON]

A val loader (file order, centre crops) at 160 px on 2 decoding threads reads BETON
(default ``data/betons/train.beton``: 3,000 images, so that an epoch is long) in
batches of BATCH, float32 (normalised in the decoder) or uint8 (normalised in torch
after it). ffcv's ``EpochIterator.run_pipeline`` is wrapped to time each call and each
compiled stage in it; ``batches_per_launch = 1`` keeps the loader in ffcv's loop, the
one ``run_pipeline`` belongs to. For each of 4 epochs prints the wall time, the time in
the compiled stages, and per batch the Python work around them and the rest (the
queue, the consumer's loop).

Needs the ``.betons`` of ``make demo`` (or ``make data/betons/train.beton``).
"""
import sys
import time

import torch
from ffcv.loader.epoch_iterator import EpochIterator

from ffcv_imagenet.data.read.loaders import val_loader

if len(sys.argv) not in (3, 4):
    sys.exit(__doc__.split('\n\n')[1])
beton = sys.argv[3] if len(sys.argv) == 4 else 'data/betons/train.beton'
stats = {'pipe': 0.0, 'stage': 0.0, 'n': 0}
original = EpochIterator.run_pipeline


def timed(self, *args, **kwargs):
    start = time.perf_counter()
    code, outputs = self.loader.code

    def wrap(stage):
        def run(*a, **k):
            t = time.perf_counter()
            result = stage(*a, **k)
            stats['stage'] += time.perf_counter() - t
            return result
        return run
    self.loader.code = ([(wrap(stage), d) for stage, d in code], outputs)
    try:
        return original(self, *args, **kwargs)
    finally:
        self.loader.code = (code, outputs)
        stats['pipe'] += time.perf_counter() - start
        stats['n'] += 1


EpochIterator.run_pipeline = timed
loader = val_loader(beton, batch_size=int(sys.argv[1]), resolution=160, num_workers=2,
                    decoder_dtype=torch.float32 if sys.argv[2] == 'f32' else torch.uint8)
loader.loader.batches_per_launch = 1  # ffcv's own loop, which run_pipeline belongs to
for epoch in range(4):
    stats.update(pipe=0.0, stage=0.0, n=0)
    start = time.perf_counter()
    for images, labels in loader:
        pass
    wall = time.perf_counter() - start
    print(f"epoch {epoch}: wall {wall * 1e3:.1f} ms, pipeline {stats['stage'] * 1e3:.1f} ms, "
          f"Python around it {1e6 * (stats['pipe'] - stats['stage']) / stats['n']:.0f} µs "
          f"and queue/loop {1e6 * (wall - stats['pipe']) / stats['n']:.0f} µs per batch")
