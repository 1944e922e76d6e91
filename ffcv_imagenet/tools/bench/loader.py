"""``bench loader``: the loaders' images/sec beside torchvision's and beside the
decoding ceiling, on the same images, in one run (usage: :mod:`.command`).

Rows: (a) this project's train loader and (b) its val loader, for one output path or
both (``--decoder-dtype both``); (c) the ceiling of each: the same stored JPEGs, their
bytes already in memory, decoded in full at the scale the loader's decoder picks for
the same crops, on the same number of threads, and thrown away (see
:mod:`ffcv_imagenet.tools.bench.decode_ceiling`), and beside it the decoding the loaders do:
only the region of each frame around its crop; (d) a plain torchvision ``ImageFolder``
pipeline; with ``peers``, (e) ffcv's stock train pipeline and (f) NVIDIA DALI's CPU
pipeline (when installed) on the train ``.beton``'s images (see
:mod:`ffcv_imagenet.tools.bench.peers`); with ``reference``, (g) the loaders of an
older git revision of this package, beside today's (see :mod:`.revision`).

All but the baseline are timed interleaved, one pass of each per round, because this
machine's speed drifts within a run by more than the differences measured; a pass is
an epoch of the train set, or as many epochs of the smaller val set as make about as
many images. Each loader and peer row gets its share of its ceiling, as does the
crop-region decoding, and each loader the ratio to the older revision's: the median
over rounds of the two rows' ratio in the same round. Every row leaves out its first
pass (numba compilation, worker start-up, cold caches) and reports the median of the
others.
"""
from __future__ import annotations

import gc
import inspect
import os
import platform
import statistics
import tempfile
import time
from types import ModuleType
from typing import Callable, Iterable

import torch

from ...data.read import loaders
from ...data.read.beton import read_labels
from ...data.read.torchvision_pipelines import folder_loader, normalized_tensor
from . import decode_ceiling, peers, revision

DECODER_DTYPES = ('uint8', 'float32')
BOTH = 'both'
BASELINE = 'torchvision ImageFolder + DataLoader'
# a run whose CPUs lost this share of their time to other machines gets a warning
STEAL_WARNING = 0.05


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


# times one more pass of a pipeline (an epoch of a loader, a decoding pass) and
# returns its images/sec
Pass = Callable[[], float]
# a row's fields (its name under 'pipeline') and its pipeline's Pass
Timed = tuple[dict, Pass]


def _epochs(loader: Iterable, device: torch.device) -> Pass:
    """Times one more epoch of ``loader`` per call (:func:`epoch_rates`)."""
    return lambda: epoch_rates(lambda: loader, 1, device)[0]


def cpu_ticks(stat: str = '/proc/stat') -> tuple[int, int] | None:
    """(stolen, total) CPU time of the whole machine since boot, in clock ticks, from
    Linux's ``stat`` file; None where it cannot be read. Stolen time is what the
    hypervisor gave to other machines while this one's CPUs had work."""
    try:
        with open(stat) as handle:
            fields = handle.readline().split()
        # user nice system idle iowait irq softirq steal (guest time is inside user)
        ticks = [int(value) for value in fields[1:9]]
    except (OSError, ValueError):
        return None
    if not fields or fields[0] != 'cpu' or len(ticks) < 8:
        return None
    return ticks[7], sum(ticks)


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None
                ) -> float | None:
    """The share of the CPU time between two :func:`cpu_ticks` readings that the
    hypervisor took (0-1), or None when either is unknown or no time passed."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def repeated(run: Pass, times: int) -> Pass:
    """A pass of ``times`` passes of ``run`` (each over the same number of images):
    their images over their total time, in images/sec."""
    return lambda: times / sum(1 / run() for _ in range(times))


def interleave(passes: list[Pass], rounds: int) -> list[list[float]]:
    """Images/sec of ``rounds`` passes of each of ``passes``, timed round by round: one
    pass of each per round, in the given order in even rounds and reversed in odd ones.
    This machine's speed drifts within a run by more than the differences measured; so
    each pipeline meets the same minutes, none is always timed first or last, and a
    pipeline is set against its ceiling of the same round."""
    rates = [[] for _ in passes]
    for index in range(rounds):
        order = range(len(passes)) if index % 2 == 0 else range(len(passes) - 1, -1, -1)
        for i in order:
            rates[i].append(passes[i]())
    return rates


def timed_rows(pipelines: list[Timed], rounds: int) -> list[dict]:
    """The rows (:func:`summarise`) of ``pipelines`` timed by :func:`interleave`."""
    rates = interleave([run for _, run in pipelines], rounds)
    return [summarise(fields['pipeline'], passes,
                      **{k: v for k, v in fields.items() if k != 'pipeline'})
            for (fields, _), passes in zip(pipelines, rates)]


def paired_ratio(rates: list[float], against: list[float]) -> float:
    """The median over the timed rounds (all but the first) of ``rates[r] /
    against[r]``: two pipelines compared within each round of :func:`interleave`."""
    return statistics.median(a / b for a, b in zip(rates[1:], against[1:], strict=True))


def summarise(name: str, rates: list[float], **extra) -> dict:
    """A row: the median images/sec of ``rates`` after the first (untimed) pass, with
    its min, max and count, the first pass's rate, every pass's (``rates``) and
    ``extra`` fields."""
    timed = rates[1:]  # bench_loaders guarantees at least 2 epochs
    return {'pipeline': name, 'images_per_sec': statistics.median(timed),
            'min': min(timed), 'max': max(timed), 'epochs_timed': len(timed),
            'first_epoch_images_per_sec': rates[0], 'rates': list(rates), **extra}


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


def ceiling_passes(stored: dict[str, decode_ceiling.StoredJpegs], *, resolution: int,
                   batch_size: int, workers: int) -> tuple[list[Timed], dict]:
    """The decode-only pipelines of the JPEGs ``stored`` per loader kind ('train', then
    'val' when given): the ceiling (whole frames) and the region around each crop (the
    decoding the loaders do), each pass ``p`` decoding the crops of the loader's epoch
    ``p``; and a dict of the JPEG and raw-pixel image counts per kind. A kind without
    JPEGs (all stored raw) gets no pipelines: there is nothing to decode."""
    pipelines, counts = [], {}
    for kind, jpegs in stored.items():
        counts[kind] = {'jpeg_images': len(jpegs.sizes), 'raw_images': jpegs.raw_images}
        if not len(jpegs.sizes):
            continue
        if kind == 'train':
            def plan_for(epoch, jpegs=jpegs):  # the train loader's epochs 0, 1, ...
                return decode_ceiling.train_plan(jpegs, resolution, epoch,
                                                 batch_size=batch_size)
        else:
            fixed = decode_ceiling.val_plan(jpegs, resolution)
            plan_for = lambda _epoch, fixed=fixed: fixed  # noqa: E731
        for what, region in (('ceiling', False), ('region', True)):
            name = (f'decode only, {kind} crops (ceiling)' if what == 'ceiling'
                    else f'decode only, {kind}, crop regions')
            pipelines.append(({'pipeline': name, 'kind': what, 'loader': kind},
                              decode_ceiling.next_pass(jpegs, plan_for, workers, region)))
    return pipelines, counts


def add_shares(rows: list[dict]) -> None:
    """Gives every loader, peer and crop-region row of ``rows`` its share of the
    ceiling row of the same loader kind, where there is one: :func:`paired_ratio` of
    their ``rates``."""
    ceilings = {row['loader']: row['rates'] for row in rows if row['kind'] == 'ceiling'}
    for row in rows:
        if row['kind'] in ('loader', 'peer', 'region') and row['loader'] in ceilings:
            row['share_of_ceiling'] = paired_ratio(row['rates'], ceilings[row['loader']])


def loader_passes(loaders: ModuleType, beton: str, val_beton: str | None,
                  decoded: torch.dtype, *, label: str = 'ffcv_imagenet',
                  **common) -> list[Timed]:
    """The train (and val) loaders of the module ``loaders`` (this package's, or an
    older revision's) for one output path, named ``'{label} train loader, ...'``.
    uint8 batches on a CPU device are timed as ffcv yields them (``normalised``: False):
    normalising them is a GPU's work in training."""
    name = str(decoded).removeprefix('torch.')
    kinds = [('train', loaders.train_loader, beton)]
    if val_beton:
        kinds.append(('val', loaders.val_loader, val_beton))
    device = common['device']
    # uint8 is CUDA's path, where the device normalises the batch; on a CPU that would
    # be torch work on the consumer's thread, so the batches are timed as decoded
    as_decoded = decoded == torch.uint8 and device.type != 'cuda'
    text = f'{name} as decoded' if as_decoded else name
    pipelines = []
    for kind, make, path in kinds:
        loader = make(path, decoder_dtype=decoded, **common)
        fields = {'pipeline': f'{label} {kind} loader, {text}', 'kind': 'loader',
                  'loader': kind, 'decoder_dtype': name, 'normalised': not as_decoded}
        pipelines.append((fields, _epochs(loader.loader if as_decoded else loader, device)))
    return pipelines


def peer_passes(beton: str, *, resolution: int, batch_size: int, workers: int,
                jpegs: decode_ceiling.StoredJpegs | None = None
                ) -> tuple[list[Timed], list[str]]:
    """The peers' train pipelines on ``beton`` (ffcv's stock pipeline, then DALI's CPU
    pipeline if it imports, on ``jpegs``, the file's JPEGs if already in memory),
    timed on the CPU like the loaders; and notes for the table (DALI missing)."""
    cpu = torch.device('cpu')
    common = dict(batch_size=batch_size, resolution=resolution, num_workers=workers)
    fields = dict(kind='peer', loader='train', normalised=True)
    stock = peers.ffcv_stock_loader(beton, **common)
    pipelines = [({'pipeline': 'ffcv stock decoder, train', **fields}, _epochs(stock, cpu))]
    notes = []
    if peers.dali_available():
        jpegs = jpegs if jpegs is not None else decode_ceiling.load_jpegs(beton)
        labels = read_labels(beton)[jpegs.positions >= 0]
        dali = peers.dali_cpu_loader(jpegs, labels, **common)
        pipelines.append(({'pipeline': 'DALI CPU pipeline, train', **fields},
                          _epochs(dali, cpu)))
    else:
        notes.append(f"DALI CPU pipeline: not installed here (pip install "
                     f"{peers.DALI_PACKAGE} adds its row)")
    return pipelines, notes


def add_reference_ratios(rows: list[dict]) -> None:
    """Gives every loader row of this package the :func:`paired_ratio` of its
    ``rates`` over those of the older revision's row of the same loader and output
    path (``vs_reference``), where there is one."""
    older = {(row['loader'], row['decoder_dtype']): row for row in rows
             if row['kind'] == 'loader' and 'revision' in row}
    for row in rows:
        reference = older.get((row.get('loader'), row.get('decoder_dtype')))
        if row['kind'] == 'loader' and 'revision' not in row and reference:
            row['vs_reference'] = paired_ratio(row['rates'], reference['rates'])


def _pipelines(beton: str, val_beton: str | None, dtypes: list[torch.dtype],
               older: tuple[ModuleType, str] | None, peers: bool, *, resolution: int,
               batch_size: int, workers: int, device: torch.device
               ) -> tuple[list[Timed], dict, list[str]]:
    """What :func:`bench_loaders` interleaves: the ceilings, the loaders per output
    path (each followed by the ``older`` revision's (loaders module, commit), if any)
    and, with ``peers``, the peers; val pipelines with :func:`repeated` epochs. Returns
    them, the ceilings' image counts and the notes for the table."""
    timing = dict(resolution=resolution, batch_size=batch_size, workers=workers)
    common = dict(batch_size=batch_size, resolution=resolution, num_workers=workers,
                  device=device)
    # every JPEG's bytes, in memory for the whole run: the ceilings' (and DALI's) input
    stored = {'train': decode_ceiling.load_jpegs(beton)}
    if val_beton:
        stored['val'] = decode_ceiling.load_jpegs(val_beton)
    pipelines, counts = ceiling_passes(stored, **timing)
    for decoded in dtypes:
        pipelines += loader_passes(loaders, beton, val_beton, decoded, **common)
        if older:
            module, commit = older
            for fields, run in loader_passes(module, beton, val_beton, decoded,
                                             label=f'ffcv_imagenet {commit}', **common):
                pipelines.append(({**fields, 'revision': commit}, run))
    notes = []
    if peers:
        peer, notes = peer_passes(beton, jpegs=stored['train'], **timing)
        pipelines += peer
    # a val set is small (an epoch of make demo's takes about 0.1 s here), and a pause
    # of the machine of a few tens of ms would weigh on one epoch alone: each val pass
    # runs as many epochs as make an epoch of the train set
    per_pass = {'train': 1}
    if val_beton:
        images = {kind: sum(count.values()) for kind, count in counts.items()}
        per_pass['val'] = max(1, round(images['train'] / images['val']))
    pipelines = [({**fields, 'epochs_per_pass': per_pass[fields['loader']]},
                  repeated(run, per_pass[fields['loader']])) for fields, run in pipelines]
    return pipelines, counts, notes


def _reference_loaders(reference: str, folder: str) -> tuple[ModuleType, str]:
    """:func:`revision.import_revision`'s loaders module of ``reference`` and its
    commit, refused with a one-line error if its loaders cannot be built as today's
    are (the ``decoder_dtype`` argument came later than some revisions)."""
    module, commit = revision.import_revision(reference, folder)
    for make in (module.train_loader, module.val_loader):
        if 'decoder_dtype' not in inspect.signature(make).parameters:
            raise ValueError(f"revision {reference} ({commit}): its {make.__name__} takes "
                             f"no decoder_dtype, so it cannot be timed beside today's")
    return module, commit


def bench_loaders(beton: str, folder: str, val_beton: str | None = None, *,
                  resolution: int = 160, batch_size: int = 64, workers: int = 2,
                  epochs: int = 5, device: str = 'cpu',
                  decoder_dtype: str | None = None, peers: bool = False,
                  reference: str | None = None) -> dict:
    """Times the torchvision baseline, then, interleaved (:func:`interleave`, ``epochs``
    rounds), the loaders (per output path: :func:`decoder_dtypes_for`), with
    ``reference`` (a git revision of this package, pure Python: see
    :mod:`.revision`) that revision's loaders beside them, with ``peers`` the peers,
    and the ceilings (:func:`ceiling_passes`). Returns a dict with the settings, the
    rows (images/sec), the ceilings' image counts, notes for the table and
    ``ratio_train_vs_torchvision`` (of the first train loader row that is normalised,
    as torchvision's output is, if any). The rows come per output path (today's train and val loaders, then the older
    revision's), then the peers, the ceilings and the baseline; a row's
    ``first_epoch_images_per_sec`` and ``epochs_timed`` count passes (a val pass may
    be several epochs: ``epochs_per_pass``)."""
    if epochs < 2:
        raise ValueError("need at least 2 epochs: the first one is not timed")
    dev = torch.device(device)
    dtypes = decoder_dtypes_for(decoder_dtype, dev)
    with tempfile.TemporaryDirectory(prefix='bench-reference-') as folder_of_reference:
        # a bad revision fails before anything is timed
        older = (_reference_loaders(reference, folder_of_reference)
                 if reference else None)
        baseline = torchvision_baseline(folder, resolution, batch_size, workers)
        baseline_row = summarise(BASELINE, epoch_rates(lambda: baseline, epochs, dev),
                                 kind='baseline')
        del baseline  # its worker processes stop before ours are timed
        pipelines, counts, notes = _pipelines(
            beton, val_beton, dtypes, older, peers, resolution=resolution,
            batch_size=batch_size, workers=workers, device=dev)
        before = cpu_ticks()
        rows = timed_rows(pipelines, epochs)
        stolen = steal_share(before, cpu_ticks())
        # the loaders' numba functions are freed here, not later in another loader's
        # epoch thread while it compiles, where numba's finalizer fails
        del pipelines
        gc.collect()
    decoding = ('ceiling', 'region')
    rows = ([row for row in rows if row['kind'] not in decoding]
            + [row for row in rows if row['kind'] in decoding] + [baseline_row])
    add_shares(rows)
    add_reference_ratios(rows)
    names = [str(dtype).removeprefix('torch.') for dtype in dtypes]
    return {
        'settings': {'beton': beton, 'val_beton': val_beton, 'folder': folder,
                     'resolution': resolution, 'batch_size': batch_size, 'workers': workers,
                     'epochs': epochs, 'device': device, 'peers': peers,
                     'reference': older[1] if older else None,
                     'steal_share': stolen,
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
    train = [row for row in rows if row.get('loader') == 'train' and row['kind'] == 'loader'
             and 'revision' not in row]
    return next((row for row in train if row['normalised']), train[0])


def format_loader_table(result: dict) -> str:
    """A plain-text table of a :func:`bench_loaders` result."""
    s = result['settings']
    baseline = next(row for row in result['rows'] if row['kind'] == 'baseline')
    width = max(40, *(len(row['pipeline']) for row in result['rows']))
    lines = [f"loader benchmark: {s['resolution']} px, batch {s['batch_size']}, "
             f"{s['workers']} workers, device {s['device']}, decoder output "
             f"{' and '.join(s['decoder_dtypes'])}, {s['cpus']} CPUs; "
             f"passes 2-{s['epochs']} timed (pass 1 = warm-up/compilation, left out)",
             f"{'pipeline':<{width}} {'images/sec':>11} {'(min-max)':>15} "
             f"{'vs torchvision':>15} {'share of ceiling':>17}"]
    for row in result['rows']:
        spread = f"{row['min']:.0f}-{row['max']:.0f}"
        ratio = row['images_per_sec'] / baseline['images_per_sec']
        share = f"{row['share_of_ceiling']:.1%}" if 'share_of_ceiling' in row else ''
        lines.append(f"{row['pipeline']:<{width}} {row['images_per_sec']:>11.0f} "
                     f"{spread:>15} {ratio:>14.2f}x {share:>17}".rstrip())
    if any(row.get('normalised') is False for row in result['rows']):
        lines.append("as decoded: batches timed as ffcv yields them, uint8, not normalised "
                     "(on a GPU the device normalises them)")
    for kind, count in result['ceiling_images'].items():
        if count['raw_images']:
            lines.append(f"ceiling, {kind}: {count['jpeg_images']} JPEG images per pass; "
                         f"{count['raw_images']} stored as raw pixels are not decoded, "
                         f"nor counted")
    lines.append("pipelines interleaved: one pass of each per round; a share is the "
                 "median of the rounds' ratios")
    stolen = s.get('steal_share')
    if stolen is not None:
        lines.append(f"CPU time taken by the hypervisor during the rounds (steal): "
                     f"{stolen:.0%}" + (": numbers from this run are skewed; compare them "
                                        "with care" if stolen >= STEAL_WARNING else ""))
    per_pass = max((row.get('epochs_per_pass', 1) for row in result['rows']
                    if row.get('loader') == 'val'), default=1)
    if per_pass > 1:
        lines.append(f"a val pass is {per_pass} epochs of the val set, about as many "
                     f"images as a train epoch")
    for row in result['rows']:
        if 'vs_reference' in row:
            lines.append(f"{row['pipeline']}: {row['vs_reference']:.2f}x the loader of "
                         f"{s['reference']} (median of the rounds' ratios)")
    lines += result.get('notes', [])
    return '\n'.join(lines)
