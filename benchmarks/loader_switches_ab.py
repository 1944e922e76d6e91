"""A/B, in one process, of two of the CPU loader's settings against ffcv's behaviour:
batch buffers kept from one epoch to the next, and the decoding threads taking one
image at a time (numba's chunk size 1).

    python benchmarks/loader_switches_ab.py buffers|chunks [--kind val|train]
           [--dtype uint8|float32] [--rounds 3] [--epochs N] [--beton PATH]

Two loaders alike (160 px, batch 64, 2 decoding threads; uint8 times ffcv's batches as
decoded, float32 ``ImageLoader``'s), except that in the second
``buffers``: the buffers are allocated anew every epoch (``reuse_buffers`` off, as
ffcv does), or ``chunks``: the decoder's parallel loop splits each launch in equal
shares per thread (numba's default chunk size, 0). Each runs one untimed epoch
(compilation), then ``--rounds`` rounds time ``--epochs`` epochs of each in turn
(default 20 for val, 3 for train). Prints the kept setting's speed over the other's:
the ratio of the sums over the rounds, and each round's.

``chunks`` replaces the ``numba`` the loader module calls with a stand-in whose
``set_parallel_chunksize`` takes the epoch's loader's ``chunk_size`` when it has one;
nothing else changes. Needs ``data/betons`` from ``make demo`` (or
``make data/betons/val.beton``) unless given ``--beton``.
"""
import argparse
import threading
import time
import types

import numba
import torch

from ffcv_imagenet.data.read import ffcv_loader
from ffcv_imagenet.data.read.loaders import train_loader, val_loader

parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
parser.add_argument('switch', choices=('buffers', 'chunks'))
parser.add_argument('--kind', choices=('val', 'train'), default='val')
parser.add_argument('--dtype', choices=('uint8', 'float32'), default='float32')
parser.add_argument('--rounds', type=int, default=3)
parser.add_argument('--epochs', type=int, help='per round (default: val 20, train 3)')
parser.add_argument('--beton', help='default: data/betons/<kind>.beton')
args = parser.parse_args()
epochs = args.epochs or (20 if args.kind == 'val' else 3)
dtype = getattr(torch, args.dtype)


class _Numba(types.ModuleType):
    """numba, but for the chunk size the epoch thread sets."""

    def __getattr__(self, name):
        return getattr(numba, name)

    @staticmethod
    def set_parallel_chunksize(size):
        epoch = threading.current_thread()  # the epoch thread is ffcv's EpochIterator
        return numba.set_parallel_chunksize(
            getattr(getattr(epoch, 'loader', None), 'chunk_size', size))


ffcv_loader.numba = _Numba('numba')
make = val_loader if args.kind == 'val' else train_loader
sources = []
for kept in (True, False):
    loader = make(args.beton or f'data/betons/{args.kind}.beton', batch_size=64,
                  resolution=160, num_workers=2, decoder_dtype=dtype)
    if not kept and args.switch == 'buffers':
        loader.loader.reuse_buffers = False
    if not kept and args.switch == 'chunks':
        loader.loader.chunk_size = 0
    source = loader.loader if dtype == torch.uint8 else loader
    for _ in source:  # compiles
        pass
    sources.append(source)
seconds = [[], []]
for _ in range(args.rounds):
    for side, source in enumerate(sources):
        start = time.perf_counter()
        for _ in range(epochs):
            for _ in source:
                pass
        seconds[side].append(time.perf_counter() - start)
rounds = ', '.join(f'{other / kept:.3f}' for kept, other in zip(*seconds))
print(f"{args.switch}, {args.kind} {args.dtype}: kept setting {sum(seconds[1]) / sum(seconds[0]):.3f}x "
      f"the other (rounds: {rounds})")
