"""Reduced-scale (DCT-scaled) JPEG decoding: how sharp its crops are, and how fast the
train loader is with it, against a full-size decode.

    python benchmarks/reduced_scale_sharpness.py sharpness [--crops 500]
           [--resolutions 160 192 224] [--images FILE ...]
    python benchmarks/reduced_scale_sharpness.py speed --beton PATH [--resolution 160]
           [--rounds 7] [--epochs 2] [--workers 2]

``sharpness``: real photographs (scikit-image's data images when it is installed,
matplotlib's ``grace_hopper.jpg``, Pillow's test images when present, and ``--images``)
are written to a ``.beton`` as the published ResNet-50 storage holds its JPEGs (longest
side 500 px, never enlarged; JPEG quality 90). The train loader (flip off, uint8 output)
reads them epoch after epoch with its own random-resized crops (scale 0.08-1, ratio
3/4-4/3); the crops that ``dct_scaling`` would decode at 1/2, 1/4 or 1/8 scale are
kept, until ``--crops`` of them. Each is compared with the reference, what the
published ffcv results used: ffcv's full-size decode of the stored JPEG, then OpenCV's
``INTER_AREA`` resize of the crop. Rows, per output size:

* full-scale path: the loader with ``dct_scaling`` off (the default);
* reduced-scale path: the loader with ``dct_scaling`` on;
* reduced-scale, narrowed filter (prototype): the same reduced-scale decode, then a box
  filter narrowed to what remains after the scaled IDCT's own averaging (width
  ``sqrt(s^2 - 1)`` decoded pixels for a shrink by ``s``, centred on the crop's exact,
  unrounded place), computed here in numpy, not in the loader.

Columns: the mean over crops of the gradient energy (mean absolute difference of
neighbouring pixels, both directions, all channels) over the reference's, and the mean
absolute difference from the reference (grey levels of 255).

``speed``: two train loaders over ``--beton`` (160 px, batch 64, float32 output as on
the CPU), ``dct_scaling`` off and on, timed in interleaved rounds (``--epochs`` epochs
of each per round, the order reversed every other round); the first round (compilation)
is left out. Prints the median images/sec of each, the median of the per-round ratios, and the
share of the JPEG-stored crops that take the reduced-scale path.
"""
from __future__ import annotations

import argparse
import glob
import os
import platform
import statistics
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
from ffcv.libffcv import imdecode

from ffcv_imagenet.data.read.decoders import FusedCropDecoder
from ffcv_imagenet.data.read.loaders import ImageLoader, ShardedOrder, train_loader
from ffcv_imagenet.data.write.writer import write_beton
from ffcv_imagenet.tools.bench import decode_ceiling
from ffcv_imagenet.tools.bench.loader import (cpu_ticks, epoch_rates, interleave,
                                              paired_ratio, repeated, steal_share)

STORED_SIDE, QUALITY, BATCH = 500, 90, 32
CPU = torch.device('cpu')


def photographs(extra: list[str]) -> list[str]:
    """The photographs found on this machine, plus ``extra``."""
    found = []
    try:
        import skimage
        data = Path(skimage.__file__).parent / 'data'
        for name in ('astronaut.png', 'chelsea.png', 'coffee.png', 'rocket.jpg',
                     'motorcycle_left.png', 'motorcycle_right.png', 'camera.png',
                     'grass.png', 'gravel.png', 'brick.png'):
            if (data / name).exists():
                found.append(str(data / name))
    except ImportError:
        pass
    import matplotlib
    found.append(os.path.join(matplotlib.get_data_path(), 'sample_data', 'grace_hopper.jpg'))
    import PIL
    tests = Path(PIL.__file__).parent.parent / 'Tests' / 'images'
    found += sorted(glob.glob(str(tests / 'hopper.jpg')))
    return [p for p in found if os.path.exists(p)] + list(extra)


def gradient_energy(image: np.ndarray) -> float:
    """Mean absolute difference of vertically and of horizontally neighbouring pixels
    of an (H, W, 3) image, averaged (grey levels)."""
    pixels = image.astype(np.float64)
    return (np.abs(np.diff(pixels, axis=0)).mean() + np.abs(np.diff(pixels, axis=1)).mean()) / 2


def decode_frame(jpegs, j: int, denom: int) -> np.ndarray:
    """Stored JPEG ``j`` decoded whole by ffcv's ``imdecode`` at scale 1/denom."""
    height, width = int(jpegs.heights[j]), int(jpegs.widths[j])
    source = jpegs.data[jpegs.offsets[j]:jpegs.offsets[j] + jpegs.sizes[j]]
    frame = np.zeros(height * width * 3, dtype=np.uint8)
    assert imdecode(source, frame, height, width, height, width, 0, 0, 1, denom,
                    False, False) == 0
    rows, columns = -(-height // denom), -(-width // denom)
    return frame[:rows * columns * 3].reshape(rows, columns, 3)


def narrowed_weights(length: int, out: int, start: float, step: float) -> np.ndarray:
    """(out, length) weights over decoded pixels [j, j+1): output pixel ``i``'s box
    centred at ``start + (i + 1/2) step``, of width ``sqrt(step^2 - 1)`` pixels (a point
    when that is 0), each pixel weighed by its overlap."""
    width = np.sqrt(max(step * step - 1.0, 0.0))
    weights = np.zeros((out, length))
    for i in range(out):
        centre = start + (i + 0.5) * step
        low, high = centre - width / 2, centre + width / 2
        if width < 1e-6:
            weights[i, min(int(centre), length - 1)] = 1.0
            continue
        for j in range(max(0, int(np.floor(low))), min(length, int(np.ceil(high)))):
            weights[i, j] = max(0.0, min(high, j + 1.0) - max(low, float(j)))
        weights[i] /= weights[i].sum()
    return weights


def narrowed_resize(frame: np.ndarray, crop, denom: int, out: int) -> np.ndarray:
    """The prototype: the crop (top, left, height, width; stored-image pixels) of a frame
    decoded at 1/denom, resized to out x out with :func:`narrowed_weights`."""
    top, left, height, width = crop
    rows = narrowed_weights(frame.shape[0], out, top / denom, height / denom / out)
    columns = narrowed_weights(frame.shape[1], out, left / denom, width / denom / out)
    pixels = np.einsum('ij,jkc->ikc', rows, frame.astype(np.float64))
    pixels = np.einsum('ij,kjc->kic', columns, pixels)
    return np.floor(pixels + 0.5).clip(0, 255).astype(np.uint8)


def flipless_loader(path: Path, resolution: int, dct_scaling: bool, seed: int) -> ImageLoader:
    """The train loader's crops and order (``seed``), flip off, uint8 output."""
    decoder = FusedCropDecoder((resolution, resolution), random_crop=True, flip=False,
                               dct_scaling=dct_scaling)
    return ImageLoader(path, decoder, batch_size=BATCH, num_workers=2, device='cpu',
                       order=ShardedOrder(shuffle=True), seed=seed, in_memory=True,
                       drop_last=True, dtype=torch.float32, batches_ahead=2)


def next_epoch(loader: ImageLoader) -> np.ndarray:
    """The (n, H, W, 3) uint8 images of the loader's next epoch, as decoded."""
    images = []
    for batch in loader.loader:  # ffcv's own batches: uint8, before ImageLoader's float
        images.append(next(t for t in batch if t.ndim == 4).permute(0, 2, 3, 1).numpy().copy())
    return np.concatenate(images)


def sharpness(files: list[str], resolutions: list[int], crops: int) -> None:
    work = Path(tempfile.mkdtemp(prefix='reduced_scale_'))
    path = work / 'photos.beton'
    copies = 16
    samples = [(f, i) for i, f in enumerate(files) for _ in range(copies)]
    write_beton(samples, path, [Path(f).stem for f in files], max_resolution=STORED_SIDE,
                write_mode='jpg', jpeg_quality=QUALITY, num_workers=1)
    jpegs = decode_ceiling.load_jpegs(path)
    full = {j: decode_frame(jpegs, j, 1) for j in range(len(jpegs.sizes))}
    print(f"{len(files)} photographs: {', '.join(Path(f).name for f in files)}\n")
    print('| output px | path | gradient energy / reference | mean abs. difference '
          '(grey levels) | crops (of those drawn) |')
    print('|---|---|---|---|---|')
    for resolution in resolutions:
        rows = {name: [] for name in ('reference', 'full', 'reduced', 'narrowed')}
        epoch, seen = 0, 0
        loaders = {flag: flipless_loader(path, resolution, flag, seed=1) for flag in (False, True)}
        scaled = {}  # (image, denominator) -> frame decoded at that scale
        while len(rows['full']) < crops and epoch < 400:
            plan = decode_ceiling.train_plan(jpegs, resolution, epoch, batch_size=BATCH,
                                             seed=1, dct_scaling=True)
            boxes = decode_ceiling.train_plan(jpegs, resolution, epoch, batch_size=BATCH,
                                              seed=1).boxes  # the crops, stored pixels
            chosen = np.flatnonzero(plan.denoms > 1)
            seen += len(plan.denoms)
            off, on = next_epoch(loaders[False]), next_epoch(loaders[True])
            if len(chosen):
                for i in chosen:
                    j, denom = int(plan.positions[i]), int(plan.denoms[i])
                    top, left, height, width = (int(v) for v in boxes[i])
                    reference = cv2.resize(full[j][top:top + height, left:left + width],
                                           (resolution, resolution),
                                           interpolation=cv2.INTER_AREA)
                    if (j, denom) not in scaled:
                        scaled[j, denom] = decode_frame(jpegs, j, denom)
                    narrowed = narrowed_resize(scaled[j, denom],
                                               (top, left, height, width), denom, resolution)
                    energy = gradient_energy(reference)
                    for name, image in (('reference', reference), ('full', off[i]),
                                        ('reduced', on[i]), ('narrowed', narrowed)):
                        rows[name].append((gradient_energy(image) / energy,
                                           np.abs(image.astype(np.float64) - reference).mean()))
            epoch += 1
        names = {'reference': 'reference: full decode + OpenCV INTER_AREA',
                 'full': 'full-scale path (`dct_scaling` off, default)',
                 'reduced': 'reduced-scale path (`dct_scaling` on, the former default)',
                 'narrowed': 'reduced-scale + narrowed filter (prototype, numpy)'}
        for name, values in rows.items():
            values = np.array(values)
            print(f"| {resolution} | {names[name]} | {values[:, 0].mean():.4f} | "
                  f"{values[:, 1].mean():.4f} | {len(values)} ({len(values) / seen:.1%} "
                  f"of {seen:,}) |")


def cpu_model() -> str:
    """The CPU's model name (Linux), else the machine type."""
    try:
        with open('/proc/cpuinfo') as info:
            for line in info:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def speed(beton: str, resolution: int, rounds: int, epochs: int, workers: int) -> None:
    loaders = {flag: train_loader(beton, batch_size=64, resolution=resolution,
                                  num_workers=workers, dct_scaling=flag)
               for flag in (False, True)}
    jpegs = decode_ceiling.load_jpegs(beton)
    share = np.mean(decode_ceiling.train_plan(jpegs, resolution, 0, batch_size=64,
                                              dct_scaling=True).denoms > 1)
    before = cpu_ticks()
    passes = [repeated(lambda loader=loader: epoch_rates(lambda: loader, 1, CPU)[0], epochs)
              for loader in loaders.values()]
    off, on = interleave(passes, rounds)
    stolen = steal_share(before, cpu_ticks())
    print(f"{cpu_model()}, {workers} decoding threads, "
          f"{resolution} px, batch 64, float32; {len(jpegs.sizes)} of "
          f"{jpegs.num_samples} images stored as JPEG, {share:.1%} of their crops "
          f"(epoch 0) at reduced scale; CPU time stolen: "
          f"{'unknown' if stolen is None else f'{stolen:.1%}'}\n")
    print('| train loader | images/sec (median) | min-max | vs `dct_scaling` off |')
    print('|---|---|---|---|')
    for name, rates, ratio in (('`dct_scaling` off (default)', off, 1.0),
                               ('`dct_scaling` on', on, paired_ratio(on, off))):
        timed = rates[1:]
        print(f"| {name} | {statistics.median(timed):,.0f} | {min(timed):,.0f}-"
              f"{max(timed):,.0f} | {ratio:.3f}x |")
    ratios = [b / a for a, b in zip(off[1:], on[1:])]
    quartiles = statistics.quantiles(ratios, n=4)
    print(f"\nper-round ratio on / off: median {statistics.median(ratios):.3f}, quartiles "
          f"{quartiles[0]:.3f}-{quartiles[2]:.3f}, {sum(r > 1 for r in ratios)} of "
          f"{len(ratios)} rounds above 1")
    print(f"per round (off, on): "
          + ', '.join(f'{a:,.0f}/{b:,.0f}' for a, b in zip(off, on)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    commands = parser.add_subparsers(dest='command', required=True)
    sharp = commands.add_parser('sharpness')
    sharp.add_argument('--crops', type=int, default=500, help='per output size')
    sharp.add_argument('--resolutions', type=int, nargs='+', default=[160, 192, 224])
    sharp.add_argument('--images', nargs='*', default=[], help='more photographs')
    fast = commands.add_parser('speed')
    fast.add_argument('--beton', required=True)
    fast.add_argument('--resolution', type=int, default=160)
    fast.add_argument('--rounds', type=int, default=7, help='the first is left out')
    fast.add_argument('--epochs', type=int, default=2, help='per loader and round')
    fast.add_argument('--workers', type=int, default=2)
    args = parser.parse_args()
    if args.command == 'sharpness':
        sharpness(photographs(args.images), args.resolutions, args.crops)
    else:
        speed(args.beton, args.resolution, args.rounds, args.epochs, args.workers)


if __name__ == '__main__':
    main()
