"""Images/sec of the train and val loaders on both output paths, for an A/B of two
revisions run in alternating processes.

    python benchmarks/loader_ab.py [--betons DIR] [--train-epochs 3] [--val-epochs 20]

Times, one after the other in this process, four loaders at 160 px, batch 64, on
``--workers`` decoding threads (2): train and val, each as uint8 (ffcv's batches as
the decoder yields them, the CUDA path, not normalised) and as float32 (through
``ImageLoader``, normalised in the decoder: the CPU path). Each loader runs one
untimed epoch (numba compilation), then ``--train-epochs`` or ``--val-epochs``
epochs; its figure is their images over their total time. Prints one JSON line,
``{"train torch.uint8": images/sec, ...}``.

The revision timed is whichever ``ffcv_imagenet`` Python imports: run with
``PYTHONPATH=<an exported revision>`` to time another one (``benchmarks/ab_revisions.sh``
does that for two revisions, in alternating rounds, and prints the ratios). Works with
the package layout before 827b4a4 (``ffcv_imagenet.data.loaders``) and after
(``ffcv_imagenet.data.read.loaders``), for revisions whose loaders take
``decoder_dtype``.

Needs ``DIR/train.beton`` and ``DIR/val.beton`` (default ``data/betons``, from
``make demo`` or ``make data/betons/val.beton``).
"""
import argparse
import json
import time

import torch

try:  # the package layout since 827b4a4
    from ffcv_imagenet.data.read.loaders import train_loader, val_loader
except ModuleNotFoundError as error:  # an older revision on PYTHONPATH
    if error.name != 'ffcv_imagenet.data.read':
        raise
    from ffcv_imagenet.data.loaders import train_loader, val_loader

parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
parser.add_argument('--betons', default='data/betons', help='folder of train.beton and val.beton')
parser.add_argument('--train-epochs', type=int, default=3)
parser.add_argument('--val-epochs', type=int, default=20)
parser.add_argument('--workers', type=int, default=2)
args = parser.parse_args()

out = {}
for kind, make, epochs in (('train', train_loader, args.train_epochs),
                           ('val', val_loader, args.val_epochs)):
    for dtype in (torch.uint8, torch.float32):
        loader = make(f'{args.betons}/{kind}.beton', batch_size=64, resolution=160,
                      num_workers=args.workers, decoder_dtype=dtype)
        # uint8: ffcv's own batches, as decoded (ImageLoader would normalise them in torch)
        source = loader.loader if dtype == torch.uint8 else loader
        for _ in source:  # compiles
            pass
        start, n = time.perf_counter(), 0
        for _ in range(epochs):
            for images, _ in source:
                n += len(images)
        out[f'{kind} {dtype}'] = n / (time.perf_counter() - start)
print(json.dumps(out))
