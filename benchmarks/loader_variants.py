"""The train loader with parts of its work switched off: what the flip, the float32
normalisation and ImageLoader's work per batch each cost.

    python benchmarks/loader_variants.py [--beton data/betons/train.beton] [--epochs 4]
                                         [--batch-size 64]

Four train loaders at 160 px on 2 decoding threads, one after another: float32
(normalised in the decoder) with and without the flip, through ``ImageLoader``; and
uint8 with and without the flip, ffcv's loader alone (its batches as decoded, no torch
work per batch). The flip is switched by the decoder's ``flip`` setting, which is read
when the code is made, at the first epoch. Prints each variant's median images/sec
over epochs 2 on (the first compiles).

Needs the train ``.beton`` of ``make demo`` (or ``make data/betons/train.beton``).
"""
import argparse
import statistics
import time

import torch

from ffcv_imagenet.data.read.loaders import train_loader

parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
parser.add_argument('--beton', default='data/betons/train.beton')
parser.add_argument('--epochs', type=int, default=4, help='including the untimed first')
parser.add_argument('--batch-size', type=int, default=64)
args = parser.parse_args()


def rate(batches, epochs=args.epochs):
    rates = []
    for _ in range(epochs):
        n, t = 0, time.perf_counter()
        for x, _ in batches():
            n += x.shape[0]
        rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates[1:])


for dtype, flip, raw in [(torch.float32, True, False), (torch.float32, False, False),
                         (torch.uint8, True, True), (torch.uint8, False, True)]:
    L = train_loader(args.beton, batch_size=args.batch_size, resolution=160,
                     num_workers=2, decoder_dtype=dtype)
    L.decoder.flip = flip  # read when the decoder's code is made, at the first epoch
    print(dtype, 'flip' if flip else 'no flip', "ffcv's loader alone" if raw else 'ImageLoader',
          round(rate(lambda: L.loader if raw else L)))
