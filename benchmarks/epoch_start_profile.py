"""What starting an epoch costs: cProfile of ``iter(loader)`` over 20 epochs of a
warm val loader (ffcv's loader alone, uint8).

    python benchmarks/epoch_start_profile.py [--beton data/betons/val.beton]

The val loader at 160 px, batch 64, 2 decoding threads, runs two untimed epochs, then
20 epochs in which only the ``iter()`` call (building the epoch's iterator, sizing its
buffers, starting its thread) is profiled; the batches are read unprofiled. Prints the
18 costliest entries by cumulative time: the top one over 20 is the cost per epoch.

Needs the val ``.beton`` of ``make demo`` (or ``make data/betons/val.beton``).
"""
import argparse
import cProfile
import pstats

import torch

from ffcv_imagenet.data.read.loaders import val_loader

parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
parser.add_argument('--beton', default='data/betons/val.beton')
args = parser.parse_args()

loader = val_loader(args.beton, batch_size=64, resolution=160, num_workers=2,
                    decoder_dtype=torch.uint8)
inner = loader.loader
for _ in inner:
    pass
for _ in inner:
    pass
pr = cProfile.Profile()
for ep in range(20):
    pr.enable()
    it = iter(inner)
    pr.disable()
    for b in it:
        pass
pstats.Stats(pr).sort_stats('cumulative').print_stats(18)
