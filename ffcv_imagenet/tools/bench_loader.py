"""``bench loader``: the loaders' images/sec beside torchvision's and beside the
decoding ceiling, on the same images, in one run (usage: :mod:`.bench`).

Rows: (a) this project's train loader and (b) its val loader, for one output path or
both (``--decoder-dtype both``); (c) the ceiling of each: the same stored JPEGs, their
bytes already in memory, decoded in full at the scale the loader's decoder picks for
the same crops, on the same number of threads, and thrown away (see
:mod:`ffcv_imagenet.data.decode_ceiling`), and beside it the decoding the loaders do:
only the region of each frame around its crop; (d) a plain torchvision ``ImageFolder``
pipeline; with ``peers``, (e) ffcv's stock train pipeline and (f) NVIDIA DALI's CPU
pipeline (when installed) on the train ``.beton``'s images (see
:mod:`ffcv_imagenet.data.peer_pipelines`). Each loader and peer row also gets its share
of its ceiling (images/sec over the ceiling's), as does the crop-region decoding; the
ceilings are timed before and after the loaders, and each pools both (the machine's
speed drifts within a run). Every row leaves out its first pass (numba compilation,
worker start-up, cold caches) and reports the median of the others.
"""
from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from typing import Callable, Iterable

import torch

from ..data import decode_ceiling, peer_pipelines
from ..data.beton import read_labels
from ..data.loaders import train_loader, val_loader
from ..data.torchvision_pipelines import folder_loader, normalized_tensor

DECODER_DTYPES = ('uint8', 'float32')
BOTH = 'both'
BASELINE = 'torchvision ImageFolder + DataLoader'


def sync(device: torch.device) -> None:
    """Waits for the work queued on a GPU ``device``; nothing on the CPU."""
    # CUDA kernels run asynchronously: without this the clock would stop before the
    # queued steps have run
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def epoch_rates(make_epoch: Callable[[], Iterable], epochs: int,
                device: torch.device) -> list[float]:
    """Images/sec of each of ``epochs`` passes over ``make_epoch()``, which yields
    (images, labels) batches; the batch is touched so lazy work is counted, and work
    queued on a GPU ``device`` is waited for before each clock reading."""
    rates = []
    for _ in range(epochs):
        sync(device)
        count, start = 0, time.perf_counter()
        for images, _labels in make_epoch():
            count += images.shape[0]
        sync(device)
        rates.append(count / (time.perf_counter() - start))
    return rates


def torchvision_baseline(folder: str, resolution: int, batch_size: int, workers: int):
    """The plain pipeline every PyTorch user starts from, reading JPEG files."""
    from torchvision import datasets, transforms
    pipeline = transforms.Compose([
        transforms.RandomResizedCrop(resolution), transforms.RandomHorizontalFlip(),
        *normalized_tensor()])
    return folder_loader(datasets.ImageFolder(folder, pipeline), batch_size=batch_size,
                         workers=workers, shuffle=True, drop_last=True)


def _rates(loader: Iterable, epochs: int, device: torch.device) -> list[float]:
    """:func:`epoch_rates` of ``epochs`` passes over ``loader``, which is dropped on
    return."""
    return epoch_rates(lambda: loader, epochs, device)


def summarise(name: str, rates: list[float], **extra) -> dict:
    """A row: the median images/sec of ``rates`` after the first (untimed) pass, with
    its min, max and count, the first pass's rate, and ``extra`` fields."""
    timed = rates[1:]  # bench_loaders guarantees at least 2 epochs
    return {'pipeline': name, 'images_per_sec': statistics.median(timed),
            'min': min(timed), 'max': max(timed), 'epochs_timed': len(timed),
            'first_epoch_images_per_sec': rates[0], **extra}


def decoder_dtype_for(name: str | None, device: torch.device) -> torch.dtype:
    """The ffcv loaders' decoder output: 'uint8' or 'float32', or None for the one
    ``device`` takes in training (uint8 on a GPU, float32 on the CPU)."""
    if name is None:
        return torch.uint8 if device.type == 'cuda' else torch.float32
    if name not in DECODER_DTYPES:
        raise ValueError(f"decoder dtype must be one of {DECODER_DTYPES}, got {name!r}")
    return getattr(torch, name)


def decoder_dtypes_for(name: str | None, device: torch.device) -> list[torch.dtype]:
    """:func:`decoder_dtype_for`, or both output paths (uint8, then float32) for
    'both'."""
    if name == BOTH:
        return [getattr(torch, dtype) for dtype in DECODER_DTYPES]
    return [decoder_dtype_for(name, device)]


def ceiling_rates(beton: str, val_beton: str | None, *, resolution: int, batch_size: int,
                  workers: int, epochs: int) -> tuple[dict[tuple[str, str], list[float]], dict]:
    """Images/sec of ``epochs`` decode-only passes, per (loader, what): train crops
    (``beton``) then val crops (``val_beton``, when given), 'ceiling' (whole frames)
    and 'region' (the region around each crop: the decoding the loaders do); and a dict
    of the JPEG and raw-pixel image counts per ``.beton``."""
    rates, counts = {}, {}
    kinds = [('train', beton)] + ([('val', val_beton)] if val_beton else [])
    for kind, path in kinds:
        jpegs = decode_ceiling.load_jpegs(path)
        if kind == 'train':
            def plan_for(epoch, jpegs=jpegs):  # the train loader's epochs 0, 1, ...
                return decode_ceiling.train_plan(jpegs, resolution, epoch,
                                                 batch_size=batch_size)
        else:
            fixed = decode_ceiling.val_plan(jpegs, resolution)
            plan_for = lambda _epoch, fixed=fixed: fixed  # noqa: E731
        for what, region in (('ceiling', False), ('region', True)):
            rates[kind, what] = decode_ceiling.ceiling_rates(jpegs, plan_for, epochs,
                                                             workers, region=region)
        counts[kind] = {'jpeg_images': len(jpegs.sizes), 'raw_images': jpegs.raw_images}
        del jpegs  # the buffer holds all the file's JPEG bytes
    return rates, counts


def ceiling_rows(rates: dict[tuple[str, str], list[float]]) -> list[dict]:
    """The decode-only rows of :func:`ceiling_rates`' passes (the first one of each
    list untimed)."""
    rows = []
    for (kind, what), passes in rates.items():
        name = (f'decode only, {kind} crops (ceiling)' if what == 'ceiling'
                else f'decode only, {kind}, crop regions')
        rows.append(summarise(name, passes, kind=what, loader=kind))
    return rows


def add_shares(rows: list[dict]) -> None:
    """Gives every loader, peer and crop-region row of ``rows`` its share of the
    ceiling row of the same loader kind (images/sec over the ceiling's)."""
    ceilings = {row['loader']: row['images_per_sec'] for row in rows
                if row['kind'] == 'ceiling'}
    for row in rows:
        if row['kind'] in ('loader', 'peer', 'region'):
            row['share_of_ceiling'] = row['images_per_sec'] / ceilings[row['loader']]


def _loader_rows(beton: str, val_beton: str | None, decoded: torch.dtype, epochs: int,
                 **common) -> list[dict]:
    """The train (and val) loader rows for one output path.
    uint8 batches on a CPU device are timed as ffcv yields them (``normalised``: False):
    normalising them is a GPU's work in training."""
    name = str(decoded).removeprefix('torch.')
    kinds = [('train', train_loader, beton)]
    if val_beton:
        kinds.append(('val', val_loader, val_beton))
    device = common['device']
    # uint8 is CUDA's path, where the device normalises the batch; on a CPU that would
    # be torch work on the consumer's thread, so the batches are timed as decoded
    as_decoded = decoded == torch.uint8 and device.type != 'cuda'
    label = f'{name} as decoded' if as_decoded else name
    rows = []
    for kind, make, path in kinds:
        loader = make(path, decoder_dtype=decoded, **common)
        rates = _rates(loader.loader if as_decoded else loader, epochs, device)
        row = summarise(f'ffcv_imagenet {kind} loader, {label}', rates, kind='loader',
                        loader=kind, decoder_dtype=name, normalised=not as_decoded)
        rows.append(row)
        # frees the loader's numba functions now, not in the next loader's epoch thread
        # while it compiles, where numba's finalizer fails
        del loader
        gc.collect()
    return rows


def peer_rows(beton: str, *, resolution: int, batch_size: int, workers: int,
              epochs: int) -> tuple[list[dict], list[str]]:
    """The peers' train rows on ``beton`` (ffcv's stock pipeline, then DALI's CPU
    pipeline if it imports), timed on the CPU like the loaders; and notes for the
    table (DALI missing)."""
    cpu = torch.device('cpu')
    common = dict(batch_size=batch_size, resolution=resolution, num_workers=workers)
    stock = peer_pipelines.ffcv_stock_loader(beton, **common)
    rows = [summarise("ffcv stock decoder, train", _rates(stock, epochs, cpu))]
    del stock
    gc.collect()  # as in _loader_rows: numba functions freed before the next compiles
    notes = []
    if peer_pipelines.dali_available():
        jpegs = decode_ceiling.load_jpegs(beton)
        labels = read_labels(beton)[jpegs.positions >= 0]
        dali = peer_pipelines.dali_cpu_loader(jpegs, labels, **common)
        rows.append(summarise("DALI CPU pipeline, train", _rates(dali, epochs, cpu)))
        del dali, jpegs
    else:
        notes.append(f"DALI CPU pipeline: not installed here (pip install "
                     f"{peer_pipelines.DALI_PACKAGE} adds its row)")
    for row in rows:
        row.update(kind='peer', loader='train', normalised=True)
    return rows, notes


def bench_loaders(beton: str, folder: str, val_beton: str | None = None, *,
                  resolution: int = 160, batch_size: int = 64, workers: int = 2,
                  epochs: int = 5, device: str = 'cpu',
                  decoder_dtype: str | None = None, peers: bool = False) -> dict:
    """Times the torchvision baseline, the ceilings (:func:`ceiling_rates`, before and
    after the rest), the loaders (per output path: :func:`decoder_dtypes_for`) and,
    with ``peers``, the peers (:func:`peer_rows`); returns a dict with the settings, the rows (loaders,
    peers, ceilings, baseline last; images/sec), the ceilings' image counts, notes for
    the table and ``ratio_train_vs_torchvision`` (of the first train loader row that
    is normalised, as torchvision's output is, if any)."""
    if epochs < 2:
        raise ValueError("need at least 2 epochs: the first one is not timed")
    dev = torch.device(device)
    dtypes = decoder_dtypes_for(decoder_dtype, dev)
    # once _rates returns, the baseline's worker processes stop before ours are timed
    baseline_row = summarise(BASELINE, _rates(torchvision_baseline(
        folder, resolution, batch_size, workers), epochs, dev), kind='baseline')
    # the ceilings are timed before and after the loaders and each pools both: this
    # machine's speed drifts within a run, and a share must set a loader against the
    # ceiling of the same minutes
    timing = dict(resolution=resolution, batch_size=batch_size, workers=workers,
                  epochs=epochs)
    before, counts = ceiling_rates(beton, val_beton, **timing)
    rows = [row for decoded in dtypes
            for row in _loader_rows(beton, val_beton, decoded, epochs,
                                    batch_size=batch_size, resolution=resolution,
                                    num_workers=workers, device=dev)]
    notes = []
    if peers:
        peer, notes = peer_rows(beton, **timing)
        rows += peer
    after, _ = ceiling_rates(beton, val_beton, **timing)
    rows += ceiling_rows({key: passes + after[key][1:] for key, passes in before.items()})
    rows.append(baseline_row)
    add_shares(rows)
    names = [str(dtype).removeprefix('torch.') for dtype in dtypes]
    return {
        'settings': {'beton': beton, 'val_beton': val_beton, 'folder': folder,
                     'resolution': resolution, 'batch_size': batch_size, 'workers': workers,
                     'epochs': epochs, 'device': device, 'peers': peers,
                     'decoder_dtype': names[0] if len(names) == 1 else BOTH,
                     'decoder_dtypes': names, 'cpus': os.cpu_count(),
                     'machine': platform.processor() or platform.machine(),
                     'torch': torch.__version__},
        'rows': rows,
        'ceiling_images': counts,
        'notes': notes,
        'ratio_train_vs_torchvision': _headline_row(rows)['images_per_sec']
                                      / baseline_row['images_per_sec'],
    }


def _headline_row(rows: list[dict]) -> dict:
    """The train loader row to set against torchvision: the first normalised one (the
    baseline normalises too), else the first."""
    train = [row for row in rows if row.get('loader') == 'train' and row['kind'] == 'loader']
    return next((row for row in train if row['normalised']), train[0])


def format_loader_table(result: dict) -> str:
    """A plain-text table of a :func:`bench_loaders` result."""
    s = result['settings']
    baseline = next(row for row in result['rows'] if row['kind'] == 'baseline')
    lines = [f"loader benchmark: {s['resolution']} px, batch {s['batch_size']}, "
             f"{s['workers']} workers, device {s['device']}, decoder output "
             f"{' and '.join(s['decoder_dtypes'])}, {s['cpus']} CPUs; "
             f"epochs 2-{s['epochs']} timed (epoch 1 = warm-up/compilation, left out)",
             f"{'pipeline':<40} {'images/sec':>11} {'(min-max)':>15} {'vs torchvision':>15} "
             f"{'share of ceiling':>17}"]
    for row in result['rows']:
        spread = f"{row['min']:.0f}-{row['max']:.0f}"
        ratio = row['images_per_sec'] / baseline['images_per_sec']
        share = f"{row['share_of_ceiling']:.1%}" if 'share_of_ceiling' in row else ''
        lines.append(f"{row['pipeline']:<40} {row['images_per_sec']:>11.0f} {spread:>15} "
                     f"{ratio:>14.2f}x {share:>17}".rstrip())
    if any(row.get('normalised') is False for row in result['rows']):
        lines.append("as decoded: batches timed as ffcv yields them, uint8, not normalised "
                     "(on a GPU the device normalises them)")
    for kind, count in result['ceiling_images'].items():
        if count['raw_images']:
            lines.append(f"ceiling, {kind}: {count['jpeg_images']} JPEG images per pass; "
                         f"{count['raw_images']} stored as raw pixels are not decoded, "
                         f"nor counted")
    lines += result.get('notes', [])
    return '\n'.join(lines)
