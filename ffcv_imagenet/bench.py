"""Images/sec benchmarks, side by side in one run so that ratios are comparable.

    python -m ffcv_imagenet.bench loader --beton data/betons/train.beton \
        --val-beton data/betons/val.beton --folder data/synthetic/train \
        --resolution 160 --batch-size 64 --workers 2 --epochs 5 --json bench.json

``loader`` times, on the same images, resolution, batch size and worker count:
(a) this project's train loader, (b) its val loader, (c) a plain torchvision
``ImageFolder`` + ``RandomResizedCrop`` + flip + ``ToTensor`` + ``Normalize``
pipeline through a ``DataLoader`` reading the source folder. The first epoch of
each is left out (numba compilation for ffcv; worker start-up and a cold file
cache for torchvision); the figure is the median over the remaining epochs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Callable, Iterable

import torch

from .decoders import IMAGENET_MEAN, IMAGENET_STD
from .loaders import train_loader, val_loader


def epoch_rates(make_epoch: Callable[[], Iterable], epochs: int) -> list[float]:
    """Images/sec of each of ``epochs`` passes over ``make_epoch()``, which yields
    (images, labels) batches; the batch is touched so lazy work is counted."""
    rates = []
    for _ in range(epochs):
        count, start = 0, time.perf_counter()
        for images, _labels in make_epoch():
            count += images.shape[0]
        rates.append(count / (time.perf_counter() - start))
    return rates


def torchvision_baseline(folder: str, resolution: int, batch_size: int, workers: int):
    """The plain pipeline every PyTorch user starts from, reading JPEG files."""
    from torchvision import datasets, transforms
    pipeline = transforms.Compose([
        transforms.RandomResizedCrop(resolution), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    dataset = datasets.ImageFolder(folder, pipeline)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                       num_workers=workers, drop_last=True,
                                       persistent_workers=workers > 0)


def _summary(name: str, rates: list[float]) -> dict:
    timed = rates[1:]  # bench_loaders guarantees at least 2 epochs
    return {'pipeline': name, 'images_per_sec': statistics.median(timed),
            'min': min(timed), 'max': max(timed), 'epochs_timed': len(timed),
            'first_epoch_images_per_sec': rates[0]}


def bench_loaders(beton: str, folder: str, val_beton: str | None = None, *,
                  resolution: int = 160, batch_size: int = 64, workers: int = 2,
                  epochs: int = 5, device: str = 'cpu') -> dict:
    """Runs (a) train loader, (b) val loader, (c) torchvision baseline; returns a dict
    with the settings, a row per pipeline (images/sec) and ``ratio_train_vs_torchvision``."""
    if epochs < 2:
        raise ValueError("need at least 2 epochs: the first one is not timed")
    baseline = torchvision_baseline(folder, resolution, batch_size, workers)
    baseline_row = _summary('torchvision ImageFolder + DataLoader',
                            epoch_rates(lambda: baseline, epochs))
    del baseline  # stops its worker processes before ours are timed
    train = train_loader(beton, batch_size=batch_size, resolution=resolution,
                         num_workers=workers, device=device)
    rows = [_summary('ffcv_imagenet train loader', epoch_rates(lambda: train, epochs))]
    if val_beton:
        val = val_loader(val_beton, batch_size=batch_size, resolution=resolution,
                         num_workers=workers, device=device)
        rows.append(_summary('ffcv_imagenet val loader', epoch_rates(lambda: val, epochs)))
    rows.append(baseline_row)
    return {
        'settings': {'beton': beton, 'val_beton': val_beton, 'folder': folder,
                     'resolution': resolution, 'batch_size': batch_size, 'workers': workers,
                     'epochs': epochs, 'device': device, 'cpus': os.cpu_count(),
                     'machine': platform.processor() or platform.machine(),
                     'torch': torch.__version__},
        'rows': rows,
        'ratio_train_vs_torchvision': rows[0]['images_per_sec'] / baseline_row['images_per_sec'],
    }


def format_loader_table(result: dict) -> str:
    """A plain-text table of a :func:`bench_loaders` result."""
    s = result['settings']
    baseline = result['rows'][-1]['images_per_sec']
    lines = [f"loader benchmark: {s['resolution']} px, batch {s['batch_size']}, "
             f"{s['workers']} workers, device {s['device']}, {s['cpus']} CPUs; "
             f"epochs 2-{s['epochs']} timed (epoch 1 = warm-up/compilation, left out)",
             f"{'pipeline':<40} {'images/sec':>11} {'(min-max)':>15} {'vs torchvision':>15}"]
    for row in result['rows']:
        spread = f"{row['min']:.0f}-{row['max']:.0f}"
        ratio = row['images_per_sec'] / baseline
        lines.append(f"{row['pipeline']:<40} {row['images_per_sec']:>11.0f} {spread:>15} "
                     f"{ratio:>14.2f}x")
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    commands = parser.add_subparsers(dest='command', required=True)
    loader = commands.add_parser('loader', help='loader images/sec vs torchvision')
    loader.add_argument('--beton', required=True, help='train .beton')
    loader.add_argument('--val-beton', help='val .beton (optional)')
    loader.add_argument('--folder', required=True,
                        help='the image folder the train .beton was written from')
    loader.add_argument('--resolution', type=int, default=160, help='pixels')
    loader.add_argument('--batch-size', type=int, default=64)
    loader.add_argument('--workers', type=int, default=os.cpu_count())
    loader.add_argument('--epochs', type=int, default=5, help='including the untimed first')
    loader.add_argument('--device', default='cpu')
    loader.add_argument('--json', help='also write the result here')
    args = parser.parse_args(argv)
    for path in (args.beton, args.val_beton, args.folder):
        if path and not os.path.exists(path):
            parser.error(f"not found: {path}")
    result = bench_loaders(args.beton, args.folder, args.val_beton,
                           resolution=args.resolution, batch_size=args.batch_size,
                           workers=args.workers, epochs=args.epochs, device=args.device)
    print(format_loader_table(result))
    if args.json:
        with open(args.json, 'w') as handle:
            json.dump(result, handle, indent=1)


if __name__ == '__main__':
    main()
