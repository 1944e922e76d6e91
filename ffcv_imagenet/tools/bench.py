"""Images/sec benchmarks, side by side in one run so that ratios are comparable.

    python -m ffcv_imagenet bench loader --beton data/betons/train.beton \
        --val-beton data/betons/val.beton --folder data/synthetic/train \
        --resolution 160 --batch-size 64 --workers 2 --epochs 5 --json bench.json

``loader`` times, on the same images, resolution, batch size and worker count:
(a) this project's train loader, (b) its val loader, (c) the decoding ceiling of
each: the same stored JPEGs, their bytes already in memory, decoded in full by
libjpeg-turbo (ffcv's ``imdecode``) at the reduced scale the loader's decoder picks for
the same crops, on as many threads, and thrown away (no ffcv ``Loader``, no Python
work per image), and beside it what the loaders' decoder decodes instead (only the
part of each JPEG around its crop), (d) a plain torchvision ``ImageFolder`` + ``RandomResizedCrop`` +
flip + ``ToTensor`` + ``Normalize`` pipeline through a ``DataLoader`` reading the
source folder. Each loader row also prints its share of its ceiling. The first pass
(an epoch; for val, as many epochs as make about a train epoch) of each is left out
(numba compilation; worker start-up and a cold file cache for torchvision); the figure is the median over the remaining ones (on a GPU,
queued work is waited for before each clock reading). ``--decoder-dtype`` picks the
ffcv loaders' output path: ``uint8`` (what a CUDA device takes: decode to uint8,
normalise in torch on the device; on a CPU device that normalisation is timed on the
CPU), ``float32`` (the CPU path: normalised in the decoder) or ``both`` (a train and
a val row for each, against the same ceilings); the default is the device's own.
``--peers`` adds ffcv's stock train pipeline and NVIDIA DALI's CPU pipeline (when it
is installed) on the train ``.beton``'s images, timed on the CPU. ``--reference REV``
adds the loaders of an older git revision of this package (one without the compiled
extension, such as 5aecb75), and gives each of today's loaders its ratio to them.
All but torchvision are timed interleaved, a pass of each per round, and shares and
ratios are the medians of the rounds' ratios: the machine's speed drifts during a run.
Details: :mod:`.bench_loader`.

    python -m ffcv_imagenet bench train --beton data/betons/train.beton \
        --arch resnet50 --resolution 160 192 --batch-size 512 --precision auto \
        --steps 100 --warmup 20 --json bench_train.json

``train`` times full training steps (``training.loop.train_step``: forward, loss,
backward, SGD step) of one model, resolution, batch size and precision, two ways:
(1) *model alone*, the ceiling: one random batch already on the device, in the
loader's layout and dtype, fed again and again; (2) *end to end*: batches from the
``.beton`` train loader, re-iterated across epochs as needed. It prints both
images/sec and end-to-end / model-alone (the target on one H100 is >= 95%). Each
way gets a fresh model and optimizer from the same seed, so neither inherits the
other's weights, momentum or compiled code. Left out of the clock: the warm-up
steps (numba compilation of the loader, cudnn autotuning, ``torch.compile``),
model and loader construction, validation, learning-rate schedules, progressive
resizing, logging and checkpoints. Kept in: decoding, augmentation, the host to
device copy and epoch starts. Run it once before to have the ``.beton`` in the OS
page cache, else end to end also measures the disk.

The loader decodes ``batches_ahead`` + 1 batches ahead of the model; during the
warm-up it fills that queue for free. End to end therefore also leaves out that many
steps after the warm-up, so that a loader slower than the model cannot spend its
head start inside the timed window. A loader slower than the model by less than
(``batches_ahead`` + 1) / ``steps`` can still hide behind its queue: time enough
steps. ``--compile`` compiles with ``dynamic=False``, as training does, so that each
resolution is timed with the static-shape code training runs. ``--workers`` defaults
to the cores less two (at least one): the main thread launching the GPU's kernels
and the decoding thread's own Python need cores the workers would otherwise take.
"""
from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import time
from typing import Iterator

import torch

from ..training.distributed import select_device
from ..data.folders import classes_path, load_classes
from ..data.loaders import endless_batches, train_loader
from ..training.models import ARCHS, build_model
from ..training.optim import PRECISIONS, Precision, build_sgd, resolve_precision
from ..training.loop import train_step
# the loader benchmark lives in bench_loader; its names stay importable from here
from .bench_loader import (BOTH, DECODER_DTYPES, bench_loaders, decoder_dtype_for,
                           epoch_rates, format_loader_table, sync as _sync,
                           torchvision_baseline)

__all__ = ['bench_loaders', 'bench_train', 'decoder_dtype_for', 'default_workers',
           'epoch_rates', 'format_loader_table', 'format_train_table', 'main',
           'torchvision_baseline']

TRAIN_ROWS = ('model alone (synthetic batch)', 'end to end (.beton loader)')


def default_workers(cpus: int | None = None) -> int:
    """Decoding threads when none are asked for: ``cpus`` (default: this machine's
    cores) less two, at least one. Left free: the main thread, which launches the
    GPU's kernels, and the decoding thread's own Python work."""
    return max(1, (cpus or os.cpu_count() or 1) - 2)


def _device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def _fresh_training(arch: str, num_classes: int, *, blurpool: bool, channels_last: bool,
                    compile: bool, device: torch.device, seed: int = 0):
    """(model, optimizer), initialised from ``seed``: each measurement gets its own, so
    neither starts from the other's trained weights or momentum. Compiled as training
    compiles (static shapes, so a later resolution is not timed with dynamic-shape
    code), from a cleared cache, so that no measurement runs on, or counts against the
    recompile limit of, code compiled for an earlier one."""
    torch.manual_seed(seed)
    module = build_model(arch, num_classes, blurpool=blurpool,
                         channels_last=channels_last).to(device)
    module.train()
    # recipe defaults; the rate only has to be small enough to stay finite for a few
    # hundred steps on random labels
    optimizer = build_sgd(module, lr=0.01, momentum=0.9, weight_decay=5e-5,
                          fused=device.type == 'cuda')  # as training builds it
    if not compile:
        return module, optimizer
    torch.compiler.reset()
    return torch.compile(module, dynamic=False), optimizer


def time_steps(model, optimizer, precision: Precision, batches: Iterator, *,
               warmup: int, steps: int, device: torch.device, drain: int = 0) -> dict:
    """Runs ``warmup`` + ``drain`` untimed then ``steps`` timed training steps on
    ``batches``; ``drain``: the batches a loader had ready ahead when the warm-up
    ended, which took no time inside the window. Returns images/sec, steps timed,
    seconds, the drained steps and the last loss."""
    scaler = precision.scaler()

    def step():
        images, labels = next(batches)
        loss, _ = train_step(model, images, labels, optimizer, scaler, precision,
                             label_smoothing=0.1)
        return loss, images.shape[0]

    for _ in range(warmup + drain):
        step()
    _sync(device)
    seen, start = 0, time.perf_counter()
    for _ in range(steps):
        loss, count = step()
        seen += count
    _sync(device)
    seconds = time.perf_counter() - start
    return {'images_per_sec': seen / seconds, 'steps': steps, 'seconds': seconds,
            'untimed_after_warmup': drain, 'last_loss': loss.item()}


def _time_loader(loader, model, optimizer, precision: Precision, **timing) -> dict:
    """:func:`time_steps` on ``loader``'s batches, past those it decoded ahead during
    the warm-up, then stops the epoch left unfinished."""
    with endless_batches(loader) as batches:
        # ffcv's queue holds batches_ahead and its thread one more, waiting to hand over
        return time_steps(model, optimizer, precision, batches,
                          drain=loader.batches_ahead + 1, **timing)


def bench_train(beton: str, *, arch: str = 'resnet50', resolution: int = 160,
                batch_size: int = 512, precision: str = 'auto', channels_last: bool = True,
                blurpool: bool = True, compile: bool = False, workers: int | None = None,
                steps: int = 100, warmup: int = 20, device: str = 'auto') -> dict:
    """Training images/sec of the model alone on one synthetic batch already on the
    device, then end to end from ``beton``'s train loader; returns a dict with the
    settings, the two rows (in :data:`TRAIN_ROWS` order) and
    ``ratio_end_to_end_vs_model``. ``workers`` defaults to :func:`default_workers`."""
    if warmup < 1 or steps < 1:
        raise ValueError("need warmup >= 1 (the first steps compile) and steps >= 1")
    dev = select_device(device)  # as in training, cuDNN autotuning included
    resolved = resolve_precision(precision, dev)
    workers = default_workers() if workers is None else workers
    # ffcv sets torch's CPU threads to 1 on import and to its worker count at every epoch
    # start: give the model-alone run the count that end to end (and training) gets
    torch.set_num_threads(workers)
    classes, _ = load_classes(classes_path(beton))
    # the loader's output: channels-last always, in the dtype training asks it for
    dtype = resolved.input_dtype
    build = dict(blurpool=blurpool, channels_last=channels_last, compile=compile, device=dev)
    torch.manual_seed(1)
    images = torch.randn(batch_size, 3, resolution, resolution, device=dev).to(
        dtype=dtype, memory_format=torch.channels_last)
    labels = torch.randint(len(classes), (batch_size,), device=dev)
    model, optimizer = _fresh_training(arch, len(classes), **build)
    ceiling = time_steps(model, optimizer, resolved, itertools.repeat((images, labels)),
                         warmup=warmup, steps=steps, device=dev)
    del model, optimizer, images, labels
    loader = train_loader(beton, batch_size=batch_size, resolution=resolution,
                          num_workers=workers, device=dev, dtype=dtype)
    batches_per_epoch = len(loader)
    model, optimizer = _fresh_training(arch, len(classes), **build)
    end_to_end = _time_loader(loader, model, optimizer, resolved, warmup=warmup,
                              steps=steps, device=dev)
    del loader, model, optimizer
    # the loader's numba functions are freed by the cycle collector; left to chance, that
    # can happen in the next loader's epoch thread while it compiles, where numba's
    # finalizer fails ('Exception ignored ... KeyError')
    gc.collect()
    rows = [{'measurement': name, **row} for name, row in zip(TRAIN_ROWS, (ceiling, end_to_end))]
    return {
        'settings': {'beton': beton, 'arch': arch, 'num_classes': len(classes),
                     'resolution': resolution, 'batch_size': batch_size,
                     'precision': resolved.name, 'channels_last': channels_last,
                     'blurpool': blurpool, 'compile': compile, 'workers': workers,
                     'torch_threads': torch.get_num_threads(),
                     'steps': steps, 'warmup': warmup,
                     'untimed_after_warmup': end_to_end['untimed_after_warmup'],
                     'device': str(dev),
                     'device_name': _device_name(dev), 'torch': torch.__version__,
                     'batches_per_epoch': batches_per_epoch},
        'rows': rows,
        'ratio_end_to_end_vs_model': end_to_end['images_per_sec'] / ceiling['images_per_sec'],
    }


def format_train_table(results: dict | list[dict]) -> str:
    """A plain-text table of one :func:`bench_train` result, or of several (one per
    resolution) run with otherwise equal settings."""
    results = [results] if isinstance(results, dict) else results
    s = results[0]['settings']
    options = [f"precision {s['precision']}",
               'channels-last' if s['channels_last'] else 'contiguous',
               'blurpool' if s['blurpool'] else 'no blurpool',
               'compiled' if s['compile'] else 'eager']
    lines = [f"train benchmark: {s['arch']}, batch {s['batch_size']}, {', '.join(options)}, "
             f"{s['workers']} loader workers; {s['device_name']}, torch {s['torch']}",
             f"{s['warmup']} warm-up steps left out (compilation, autotuning), then "
             f"{s['untimed_after_warmup']} more end to end (batches its loader decoded "
             f"ahead during the warm-up); {s['steps']} steps timed",
             f"{'res':>4} {'measurement':<30} {'images/sec':>11} {'steps':>6} {'seconds':>8} "
             f"{'end to end / model':>19}"]
    for result in results:
        res, ratio = result['settings']['resolution'], result['ratio_end_to_end_vs_model']
        for row in result['rows']:
            last = row is result['rows'][-1]
            tail = f"{ratio:.3f} ({ratio:.1%})" if last else ''
            lines.append(f"{res:>4} {row['measurement']:<30} {row['images_per_sec']:>11.1f} "
                         f"{row['steps']:>6} {row['seconds']:>8.2f} {tail:>19}")
    return '\n'.join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    commands = parser.add_subparsers(dest='command', required=True)
    loader = commands.add_parser('loader', help='loader images/sec vs torchvision and vs decoding alone')
    loader.add_argument('--beton', required=True, help='train .beton')
    loader.add_argument('--val-beton', help='val .beton (optional)')
    loader.add_argument('--folder', required=True,
                        help='the image folder the train .beton was written from')
    loader.add_argument('--resolution', type=int, default=160, help='pixels')
    loader.add_argument('--batch-size', type=int, default=64)
    loader.add_argument('--workers', type=int, default=default_workers(),
                        help='decoding threads (default: the cores less two, at least one)')
    loader.add_argument('--epochs', type=int, default=5, help='including the untimed first')
    loader.add_argument('--device', default='cpu')
    loader.add_argument('--decoder-dtype', choices=DECODER_DTYPES + (BOTH,),
                        help="the ffcv loaders' output path: uint8 (normalised in torch "
                             "after the decoder), float32 (normalised in the decoder) or "
                             "both (rows for each); default: uint8 on a CUDA device, as "
                             "training takes, else float32")
    loader.add_argument('--peers', action='store_true',
                        help="also time ffcv's stock train pipeline and DALI's CPU "
                             "pipeline (when installed) on the train .beton's images")
    loader.add_argument('--reference', metavar='REV',
                        help='also time the loaders of this git revision of the package '
                             '(pure Python, before the compiled extension) beside '
                             "today's, e.g. 5aecb75")
    loader.add_argument('--json', help='also write the result here')
    train = commands.add_parser('train', help='training images/sec: model alone vs end to end')
    train.add_argument('--beton', required=True, help='train .beton')
    train.add_argument('--arch', choices=ARCHS, default='resnet50')
    train.add_argument('--resolution', type=int, nargs='+', default=[160],
                       help='pixels; several values give a pair of rows each')
    train.add_argument('--batch-size', type=int, default=512)
    train.add_argument('--precision', choices=PRECISIONS, default='auto')
    train.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=True)
    train.add_argument('--blurpool', action=argparse.BooleanOptionalAction, default=True)
    train.add_argument('--compile', action='store_true', help='torch.compile the model')
    train.add_argument('--workers', type=int, default=default_workers(),
                       help='decoding threads (default: the cores less two, at least '
                            'one: the main thread launches the kernels)')
    train.add_argument('--steps', type=int, default=100, help='timed steps per measurement')
    train.add_argument('--warmup', type=int, default=20, help='untimed steps before them')
    train.add_argument('--device', choices=('auto', 'cuda', 'cpu'), default='auto',
                       help="'auto': cuda if available")
    train.add_argument('--json', help='also write the results (a list, one per resolution)')
    return parser


def _write_json(path: str | None, result) -> None:
    if path:
        with open(path, 'w') as handle:
            json.dump(result, handle, indent=1)


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    paths = [args.beton]
    if args.command == 'loader':
        paths += [args.val_beton, args.folder]
    for path in paths:
        if path and not os.path.exists(path):
            parser.error(f"not found: {path}")
    if args.command == 'loader':
        result = bench_loaders(args.beton, args.folder, args.val_beton,
                               resolution=args.resolution, batch_size=args.batch_size,
                               workers=args.workers, epochs=args.epochs, device=args.device,
                               decoder_dtype=args.decoder_dtype, peers=args.peers,
                               reference=args.reference)
        print(format_loader_table(result))
        _write_json(args.json, result)
        return
    results = [bench_train(args.beton, arch=args.arch, resolution=res,
                           batch_size=args.batch_size, precision=args.precision,
                           channels_last=args.channels_last, blurpool=args.blurpool,
                           compile=args.compile, workers=args.workers, steps=args.steps,
                           warmup=args.warmup, device=args.device)
               for res in args.resolution]
    print(format_train_table(results))
    _write_json(args.json, results)

if __name__ == '__main__':
    main()
