"""The train loader's two orders on a file read from disk, and what each does to the
classes of a batch.

    python -m ffcv_imagenet bench order --beton big.beton --batch-size 256 --json o.json
    python -m ffcv_imagenet bench order --make-beton big.beton --gigabytes 4
    python -m ffcv_imagenet bench order --diversity

Reading (``--beton``): for each order (``random``, ``blocks``), in a fresh process (so
that its peak memory is its own), the train loader with ``in_memory=False`` (each
batch's samples read from the file) reads one epoch. Before it the file's
pages are dropped from the page cache (``sync``, then ``posix_fadvise(DONTNEED)``),
and what stays resident is counted (``fincore``, else ``mincore``: :mod:`.memory`), so
that every byte comes from the disk. It reports images/sec, the bytes the process read
from the disk per image (``/proc/self/io`` ``read_bytes``) and the process's peak
resident memory.

``--make-beton`` writes a file to read: raw 500 x 375 px images of noise with
labels, in a few seconds per GB (the loader's decoding of raw pixels is a copy and a
resize, so the disk and the order are what is timed).

``--diversity`` simulates ImageNet's label layout (1,000 classes x 1,281 images) and
counts the distinct classes of each batch of rank 0 (of ``--world-size``) in both
orders, for a file written in class order and one written shuffled, with
``--images-per-page`` images per 8 MiB page (32: the published rn50 storage, about
260 KB per image).
"""
from __future__ import annotations

import multiprocessing
import os
import resource
import time
from pathlib import Path

import numpy as np

from ...data.read.orders import ORDERS, block_order, blocks_of, epoch_order
from .memory import evict

IMAGENET_CLASSES, IMAGENET_PER_CLASS = 1000, 1281


def _disk_read_bytes() -> int:
    with open('/proc/self/io') as handle:
        fields = dict(line.split(': ') for line in handle.read().splitlines())
    return int(fields['read_bytes'])


def read_one_epoch(beton: str, order: str, batch_size: int, resolution: int,
                   workers: int, window: int, seed: int) -> dict:
    """One epoch of ``beton`` in ``order`` (``in_memory=False``), its pages dropped from
    the page cache first: images, seconds, images/sec, bytes read from the disk (and
    per image), what stayed resident after the eviction, and this process's peak RSS
    (MiB; the whole process's, so call it in a fresh one)."""
    from ...data.read.loaders import train_loader
    loader = train_loader(beton, batch_size=batch_size, resolution=resolution,
                          num_workers=workers, in_memory=False, order=order,
                          order_window=window, seed=seed)
    left = evict(beton)  # what stays cached, counted by fincore or mincore
    before, began, images = _disk_read_bytes(), time.perf_counter(), 0
    for _, labels in loader:
        images += labels.shape[0]
    seconds = time.perf_counter() - began
    read = _disk_read_bytes() - before
    return {'order': order, 'images': images, 'seconds': seconds,
            'images_per_sec': images / seconds, 'disk_bytes_read': read,
            'disk_bytes_per_image': read / max(images, 1), 'resident_after_evict': left,
            'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def read_orders(beton: str, *, batch_size: int = 256, resolution: int = 160,
                workers: int = 2, window: int = 16, seed: int = 0,
                orders: tuple[str, ...] = ORDERS) -> list[dict]:
    """One epoch of ``beton`` in each of ``orders`` from the disk, each in a fresh
    process: a row each (see the module docstring), with the file's size."""
    context = multiprocessing.get_context('spawn')
    rows = []
    for order in orders:
        with context.Pool(1) as pool:
            row = pool.apply(read_one_epoch, (beton, order, batch_size, resolution,
                                                workers, window, seed))
        rows.append({**row, 'file_bytes': os.path.getsize(beton)})
    return rows


def make_beton(path: str | os.PathLike, gigabytes: float, *, classes: int = 100,
               seed: int = 0) -> int:
    """Writes ``path``: raw 500 x 375 px noise images with labels in ``classes``,
    ``gigabytes`` in all, shuffled labels; returns the images written."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    count = max(1, int(gigabytes * 1e9 // (500 * 375 * 3)))
    rng = np.random.default_rng(seed)
    labels = rng.integers(classes, size=count)
    tile = rng.integers(0, 256, size=(375 + 64, 500 + 64, 3), dtype=np.uint8)

    class Noise:
        def __len__(self):
            return count

        def __getitem__(self, index):
            # a shifted window of one noise tile: distinct images without drawing each
            dy, dx = index % 64, (index // 64) % 64
            return tile[dy:dy + 375, dx:dx + 500], int(labels[index])

    writer = DatasetWriter(str(path), {'image': RGBImageField(write_mode='raw'),
                                       'label': IntField()}, num_workers=1)
    writer.from_indexed_dataset(Noise())
    return count


def class_diversity(*, classes: int = IMAGENET_CLASSES, per_class: int = IMAGENET_PER_CLASS,
                    images_per_page: int = 32, batch_size: int = 512, world_size: int = 8,
                    window: int = 16, batches: int = 200, seed: int = 0) -> list[dict]:
    """Distinct classes per batch of rank 0 in the first ``batches`` batches of epoch 0,
    for each (file written in class order / shuffled) x (random / blocks order): mean
    and smallest."""
    count = classes * per_class
    by_class = np.repeat(np.arange(classes), per_class)
    layouts = {'class order': by_class,
               'shuffled': by_class[np.random.default_rng(seed).permutation(count)]}
    indices = np.arange(count)
    blocks = blocks_of(indices, indices // images_per_page)
    orders = {
        'random': epoch_order(indices, seed, 0, rank=0, world_size=world_size,
                              equal_shards=True),
        'blocks': block_order(blocks, seed, 0, rank=0, world_size=world_size, window=window,
                              equal_shards=True)}
    rows = []
    for layout, labels in layouts.items():
        for name, order in orders.items():
            usable = min(batches, len(order) // batch_size)
            per_batch = [len(np.unique(labels[order[b * batch_size:(b + 1) * batch_size]]))
                         for b in range(usable)]
            rows.append({'file': layout, 'order': name, 'batches': usable,
                         'mean_classes': float(np.mean(per_batch)),
                         'min_classes': int(np.min(per_batch))})
    return rows


def format_reading(rows: list[dict]) -> str:
    """The reading rows as a markdown table."""
    lines = ['| order | images | images/sec | disk bytes read per image | peak RSS (MiB) | '
             'resident after eviction (MiB) |', '|---|---:|---:|---:|---:|---:|']
    for row in rows:
        lines.append(f"| {row['order']} | {row['images']} | {row['images_per_sec']:.0f} | "
                     f"{row['disk_bytes_per_image'] / 1024:.0f} KiB | "
                     f"{row['peak_rss_mib']:.0f} | {row['resident_after_evict'] / 2**20:.1f} |")
    size = rows[0]['file_bytes'] if rows else 0
    lines.append(f"\nFile: {size / 1e9:.2f} GB, {size / max(rows[0]['images'], 1) / 1024:.0f} "
                 f"KiB per image read" if rows else '')
    return '\n'.join(lines)


def format_diversity(rows: list[dict], batch_size: int) -> str:
    """The diversity rows as a markdown table."""
    lines = [f'| file written in | order | distinct classes per batch of {batch_size} '
             f'(mean) | smallest |', '|---|---|---:|---:|']
    lines += [f"| {r['file']} | {r['order']} | {r['mean_classes']:.1f} | {r['min_classes']} |"
              for r in rows]
    return '\n'.join(lines)


def run(args) -> dict:
    """``bench order``'s work for parsed ``args``; prints the tables, returns them."""
    result = {}
    if args.make_beton:
        began = time.perf_counter()
        count = make_beton(args.make_beton, args.gigabytes, seed=args.seed)
        print(f"wrote {count} images, {Path(args.make_beton).stat().st_size / 1e9:.2f} GB, "
              f"in {time.perf_counter() - began:.0f} s: {args.make_beton}")
    if args.beton:
        result['reading'] = read_orders(args.beton, batch_size=args.batch_size,
                                        resolution=args.resolution, workers=args.workers,
                                        window=args.window, seed=args.seed)
        print(format_reading(result['reading']))
    if args.diversity:
        result['diversity'] = class_diversity(
            images_per_page=args.images_per_page, batch_size=args.diversity_batch,
            world_size=args.world_size, window=args.window, seed=args.seed)
        print(format_diversity(result['diversity'], args.diversity_batch))
    return result
