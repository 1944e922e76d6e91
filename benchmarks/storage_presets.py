"""The storage presets side by side: each one's bytes per image and train-loader
images/sec on the same synthetic images, in one run.

    python benchmarks/storage_presets.py [--out data/storage_presets] [--classes 10]
        [--per-class 150] [--resolution 160] [--batch-size 64] [--workers 2] [--rounds 7]

Generates a synthetic train split (``python -m ffcv_imagenet synthetic``, seed 0; kept
in ``OUT/synthetic`` and reused), converts it once per preset with ``python -m
ffcv_imagenet convert --preset NAME`` into ``OUT/NAME.beton``, then times one epoch of
each preset's train loader per round, interleaved, the order reversed every other round
(as ``bench loader`` times its rows; the machine's speed drifts within a run). The first
round is left out (numba compilation, cold caches); a preset's images/sec is the median
of the others, and its ratio to ``fast-256`` the median of the per-round ratios.

Prints the size of the source images (longest side, pixels), then a markdown table:
images stored as JPEG / raw, image bytes per image (summed from the allocation table,
as ``beton_image_bytes.py`` does), file size, loader images/sec. Needs only this
package; about 1 GB of disk at the defaults.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ffcv_imagenet.cli import convert
from ffcv_imagenet.data.folders import list_tree
from ffcv_imagenet.data.read.beton import read_image_table
from ffcv_imagenet.data.read.loaders import train_loader
from ffcv_imagenet.data.synthetic import generate
from ffcv_imagenet.data.write.storage import PRESETS
from ffcv_imagenet.tools.bench.loader import cpu_ticks, epoch_rates, interleave, steal_share

BASE = 'fast-256'


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='data/storage_presets')
    parser.add_argument('--classes', type=int, default=10)
    parser.add_argument('--per-class', type=int, default=150, help='train images per class')
    parser.add_argument('--resolution', type=int, default=160, help='loader output, pixels')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--workers', type=int, default=2, help='processes and threads')
    parser.add_argument('--rounds', type=int, default=7, help='including the untimed first')
    return parser.parse_args()


def _source_sizes(folder: Path) -> str:
    """A line on the longest sides (pixels) of the images in ``folder``."""
    sides = np.array([max(Image.open(path).size) for path, _ in list_tree(folder)[0]])
    shares = ', '.join(f"{(sides > limit).mean():.0%} over {limit} px"
                       for limit in (256, 400, 500))
    return (f"source images: {len(sides)}, longest side {sides.min()}-{sides.max()} px, "
            f"mean {sides.mean():.0f}; {shares}")


def _convert(source: Path, out: Path, name: str, workers: int) -> str:
    """Writes ``out`` with preset ``name`` (unless there); returns the time it took."""
    if out.is_file():
        return 'earlier run'
    start = time.perf_counter()
    code = convert.main([f'--cfg.data_dir={source}', f'--cfg.write_path={out}',
                         '--preset', name, f'--cfg.num_workers={workers}'])
    if code:
        raise SystemExit(f"converting {out} failed ({code})")
    return f"{time.perf_counter() - start:.0f} s"


def _storage_row(path: Path) -> dict:
    table = read_image_table(path)
    sizes = table['size'].astype(np.int64)
    return {'jpeg': int((table['mode'] == 0).sum()), 'raw': int((table['mode'] == 1).sum()),
            'kb_per_image': sizes.sum() / len(sizes) / 1000,
            'file_mib': os.path.getsize(path) / 2 ** 20}


def main() -> None:
    args = _arguments()
    out = Path(args.out)
    source = out / 'synthetic' / 'train'
    if not source.is_dir():
        generate(out / 'synthetic', classes=args.classes, train_per_class=args.per_class,
                 val_per_class=0, seed=0, workers=args.workers)
    print(_source_sizes(source))
    betons = {name: out / f'{name}.beton' for name in PRESETS}
    seconds = {name: _convert(source, path, name, args.workers)
               for name, path in betons.items()}
    device = torch.device('cpu')
    loaders = {name: train_loader(path, batch_size=args.batch_size,
                                  resolution=args.resolution, num_workers=args.workers,
                                  device=device) for name, path in betons.items()}
    passes = [lambda loader=loader: epoch_rates(lambda: loader, 1, device)[0]
              for loader in loaders.values()]
    load, before = os.getloadavg()[0], cpu_ticks()
    rates = dict(zip(loaders, interleave(passes, args.rounds)))
    stolen = steal_share(before, cpu_ticks())
    print(f"train loader: {args.resolution} px, batch {args.batch_size}, {args.workers} "
          f"threads, float32 output, CPU; {args.rounds} rounds, the first left out; "
          f"CPU time stolen by the hypervisor: "
          f"{'unknown' if stolen is None else f'{stolen:.1%}'}; load average before: "
          f"{load:.1f}\n")
    print("| preset | settings | JPEG / raw images | image bytes per image | file | "
          "conversion | train loader images/sec, median (min-max) | vs fast-256 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, path in betons.items():
        row, timed = _storage_row(path), rates[name][1:]
        ratio = statistics.median(a / b for a, b in zip(timed, rates[BASE][1:]))
        print(f"| `{name}` | {PRESETS[name].storage.describe()} | {row['jpeg']} / "
              f"{row['raw']} | {row['kb_per_image']:.0f} KB | {row['file_mib']:.0f} MiB | "
              f"{seconds[name]} | {statistics.median(timed):.0f} "
              f"({min(timed):.0f}-{max(timed):.0f}) | {ratio:.2f}x |")


if __name__ == '__main__':
    main()
