"""Images/sec of each epoch of one loader, in one process: the before/after timing of
a change (two revisions in turn, each on PYTHONPATH), or a steady process to profile.

    python benchmarks/train_loader_epochs.py float32|uint8 wrapped|raw EPOCHS [train|val]

``float32`` / ``uint8``: the decoder's output (normalised in the decoder, or not);
``wrapped`` times ``ImageLoader``'s batches (uint8 ones normalised in torch on this
thread), ``raw`` ffcv's batches as the decoder yields them. The train loader (default)
reads ``data/betons/train.beton``, ``val`` the val loader on ``data/betons/val.beton``;
160 px, batch 64, 2 decoding threads. Prints the arguments, each epoch's images/sec and
the median of epochs 2 on (the first compiles).

To profile a warm loader: start it with many epochs in the background and attach,
e.g. ``python benchmarks/train_loader_epochs.py uint8 raw 300 val & sleep 30;
perf record -F 999 -g -p $! -- sleep 10``.

Works with the package layout before 827b4a4 (``ffcv_imagenet.data.loaders``) and
after. Needs ``data/betons`` from ``make demo`` (or ``make data/betons/val.beton``).
"""
import statistics
import sys
import time

import torch

try:  # the package layout since 827b4a4
    from ffcv_imagenet.data.read.loaders import train_loader, val_loader
except ModuleNotFoundError as error:  # an older revision on PYTHONPATH
    if error.name != 'ffcv_imagenet.data.read':
        raise
    from ffcv_imagenet.data.loaders import train_loader, val_loader

if len(sys.argv) not in (4, 5):
    sys.exit(__doc__.split('\n\n')[1])
dtype = getattr(torch, sys.argv[1])
raw = sys.argv[2] == 'raw'
epochs = int(sys.argv[3])
kind = sys.argv[4] if len(sys.argv) == 5 else 'train'
make = train_loader if kind == 'train' else val_loader
L = make(f'data/betons/{kind}.beton', batch_size=64, resolution=160, num_workers=2,
         decoder_dtype=dtype)
rates = []
for e in range(epochs):
    n, t = 0, time.perf_counter()
    for x, _ in (L.loader if raw else L):
        n += x.shape[0]
    rates.append(n / (time.perf_counter() - t))
print(sys.argv[1:], [round(r) for r in rates], round(statistics.median(rates[1:])))
