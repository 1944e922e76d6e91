"""Training steps timed two ways: the model alone on one batch already on the device
(the ceiling), and end to end from the ``.beton`` loader.

    python -m ffcv_imagenet bench train --beton data/betons/train.beton \
        --arch resnet50 --resolution 160 192 --batch-size 512 --precision auto \
        --steps 100 --warmup 20 --json bench_train.json

``train`` times full training steps (``training.step.train_step``: forward, loss,
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

``--blurpool-forms`` adds model-alone rows with BlurPool off, in its reference form
(the blur at every position, then the strided conv) and in the form training uses
(``'conv'``: the same function, the blur before a 1x1 strided conv computed only where
that conv reads it); see :mod:`ffcv_imagenet.training.blurpool`. They run one after
the other, each on a fresh model from the same seed: on a busy machine, rerun.
"""
from __future__ import annotations

import gc
import itertools
import os
import platform
import time
from typing import Iterator

import torch

from ...data.folders import classes_path, load_classes
from ...data.read.loaders import endless_batches, train_loader
from ...training.distributed import process_group_of_one, select_device, wrap_ddp
from ...training.compiled import compiled, mark_step
from ...training.step import train_step
from ...training.models import build_model, set_blur_form
from ...training.optim import Precision, build_sgd, resolve_precision
from .loader import sync as _sync

TRAIN_ROWS = ('model alone (synthetic batch)', 'end to end (.beton loader)')
# --blurpool-forms: (form, row name); 'off' builds the model without BlurPool
BLURPOOL_ROWS = (('off', 'model alone, no blurpool'),
                 ('reference', 'model alone, blurpool reference'),
                 ('conv', 'model alone, blurpool conv (default)'))


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
                    compile: bool, device: torch.device, seed: int = 0,
                    blur_form: str = 'conv', compile_mode: str = 'default',
                    ddp_bucket_mb: float | None = None, compile_backend: str = 'inductor'):
    """(model, optimizer), initialised from ``seed``: each measurement gets its own, so
    neither starts from the other's trained weights or momentum. Compiled as training
    compiles (static shapes, so a later resolution is not timed with dynamic-shape
    code), from a cleared cache, so that no measurement runs on, or counts against the
    recompile limit of, code compiled for an earlier one. ``ddp_bucket_mb``: wrapped in
    DDP as training wraps it, with buckets of that many MiB (needs a process group)."""
    torch.manual_seed(seed)
    module = build_model(arch, num_classes, blurpool=blurpool,
                         channels_last=channels_last).to(device)
    module.train()
    set_blur_form(module, blur_form)
    # recipe defaults; the rate only has to be small enough to stay finite for a few
    # hundred steps on random labels
    optimizer = build_sgd(module, lr=0.01, momentum=0.9, weight_decay=5e-5,
                          fused=device.type == 'cuda')  # as training builds it
    model = module if ddp_bucket_mb is None else wrap_ddp(module, device, ddp_bucket_mb)
    if not compile:
        return model, optimizer
    torch.compiler.reset()
    return compiled(model, compile_mode, compile_backend), optimizer


def time_steps(model, optimizer, precision: Precision, batches: Iterator, *,
               warmup: int, steps: int, device: torch.device, drain: int = 0) -> dict:
    """Runs ``warmup`` + ``drain`` untimed then ``steps`` timed training steps on
    ``batches``; ``drain``: the batches a loader had ready ahead when the warm-up
    ended, which took no time inside the window. Returns images/sec, steps timed,
    seconds, the drained steps, the last loss and ``first_step_s``, the first step's
    seconds (with ``torch.compile``, its compilation)."""
    scaler = precision.scaler()

    def step():
        images, labels = next(batches)
        mark_step()  # CUDA graphs (reduce-overhead): the last step's outputs are done with
        loss, _ = train_step(model, images, labels, optimizer, scaler, precision,
                             label_smoothing=0.1)
        return loss, images.shape[0]

    began = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - began
    for _ in range(warmup - 1 + drain):
        step()
    _sync(device)
    seen, start = 0, time.perf_counter()
    for _ in range(steps):
        loss, count = step()
        seen += count
    _sync(device)
    seconds = time.perf_counter() - start
    return {'images_per_sec': seen / seconds, 'steps': steps, 'seconds': seconds,
            'untimed_after_warmup': drain, 'last_loss': loss.item(), 'first_step_s': first}


def _time_loader(loader, model, optimizer, precision: Precision, **timing) -> dict:
    """:func:`time_steps` on ``loader``'s batches, past those it decoded ahead during
    the warm-up, then stops the epoch left unfinished."""
    with endless_batches(loader) as batches:
        # ffcv's queue holds batches_ahead and its thread one more, waiting to hand over
        return time_steps(model, optimizer, precision, batches,
                          drain=loader.batches_ahead + 1, **timing)


def _time_blurpool_forms(arch: str, num_classes: int, build: dict, precision: Precision,
                         batch, **timing) -> list[dict]:
    """Model-alone rows (:data:`BLURPOOL_ROWS` order) on ``batch``, each with its
    images/sec relative to the reference form's, ``vs_reference``."""
    rows = []
    for form, name in BLURPOOL_ROWS:
        options = dict(build, blurpool=form != 'off', blur_form='conv' if form == 'off' else form)
        model, optimizer = _fresh_training(arch, num_classes, **options)
        rows.append({'measurement': name, 'blur_form': form,
                     **time_steps(model, optimizer, precision, itertools.repeat(batch), **timing)})
        del model, optimizer
    reference = next(row for row in rows if row['blur_form'] == 'reference')
    for row in rows:
        row['vs_reference'] = row['images_per_sec'] / reference['images_per_sec']
    return rows


def _time_compile_modes(arch: str, num_classes: int, build: dict, precision: Precision,
                        batch, modes: list[str], eager_rate: float, **timing) -> list[dict]:
    """Model-alone rows on ``batch``, compiled in each of ``modes`` (one after the
    other, each on a fresh model from the same seed), with images/sec relative to the
    ``eager_rate`` of the same model uncompiled, ``vs_eager``, and the first step's
    seconds (its compilation), ``first_step_s``."""
    rows = []
    for mode in modes:
        model, optimizer = _fresh_training(arch, num_classes, **dict(
            build, compile=True, compile_mode=mode))
        row = time_steps(model, optimizer, precision, itertools.repeat(batch), **timing)
        rows.append({'measurement': f'model alone, compiled {mode}', 'compile_mode': mode,
                     **row, 'vs_eager': row['images_per_sec'] / eager_rate})
        del model, optimizer
    return rows


def _time_ddp_buckets(arch: str, num_classes: int, build: dict, precision: Precision,
                      batch, buckets: list[float], plain_rate: float, **timing) -> list[dict]:
    """Model-alone rows on ``batch`` under DDP in a process group of this process
    alone (NCCL on a GPU), one per bucket size in MiB, each with images/sec relative to
    ``plain_rate``, the same model without DDP, ``vs_plain``: what DDP itself costs a
    step (its hooks, bucket copies and one-rank all-reduces), before any other rank."""
    rows = []
    with process_group_of_one(build['device']):
        for mb in buckets:
            model, optimizer = _fresh_training(arch, num_classes,
                                               **dict(build, ddp_bucket_mb=mb))
            row = time_steps(model, optimizer, precision, itertools.repeat(batch), **timing)
            rows.append({'measurement': f'model alone, DDP, {mb:g} MiB buckets',
                         'bucket_mb': mb, **row, 'vs_plain': row['images_per_sec'] / plain_rate})
            del model, optimizer
    return rows


def bench_train(beton: str, *, arch: str = 'resnet50', resolution: int = 160,
                batch_size: int = 512, precision: str = 'auto', channels_last: bool = True,
                blurpool: bool = True, compile: bool = False, workers: int | None = None,
                steps: int = 100, warmup: int = 20, device: str = 'auto',
                blurpool_forms: bool = False, compile_modes: list[str] = (),
                compile_mode: str = 'default', ddp_buckets: list[float] = (),
                compile_backend: str = 'inductor') -> dict:
    """Training images/sec of the model alone on one synthetic batch already on the
    device, then end to end from ``beton``'s train loader; returns a dict with the
    settings, the two rows (in :data:`TRAIN_ROWS` order) and
    ``ratio_end_to_end_vs_model``. ``workers`` defaults to :func:`default_workers`.
    ``blurpool_forms``: also ``blurpool_rows``, model alone with BlurPool off and in
    its reference and default forms (:data:`BLURPOOL_ROWS`). ``compile_modes``: also
    ``compile_rows``, model alone compiled in each ``torch.compile`` mode named, beside
    the model-alone row (eager unless ``compile``). ``ddp_buckets``: also ``ddp_rows``,
    model alone under DDP in a group of one, per bucket size (MiB). ``compile_backend``:
    ``torch.compile``'s (``'eager'``: dynamo's tracing alone, for a quick check)."""
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
    build = dict(blurpool=blurpool, channels_last=channels_last, compile=compile, device=dev,
                 compile_mode=compile_mode, compile_backend=compile_backend)
    torch.manual_seed(1)
    images = torch.randn(batch_size, 3, resolution, resolution, device=dev).to(
        dtype=dtype, memory_format=torch.channels_last)
    labels = torch.randint(len(classes), (batch_size,), device=dev)
    model, optimizer = _fresh_training(arch, len(classes), **build)
    ceiling = time_steps(model, optimizer, resolved, itertools.repeat((images, labels)),
                         warmup=warmup, steps=steps, device=dev)
    del model, optimizer
    compile_rows = _time_compile_modes(arch, len(classes), build, resolved, (images, labels),
                                       list(compile_modes), ceiling['images_per_sec'],
                                       warmup=warmup, steps=steps, device=dev)
    ddp_rows = _time_ddp_buckets(arch, len(classes), build, resolved, (images, labels),
                                 list(ddp_buckets), ceiling['images_per_sec'],
                                 warmup=warmup, steps=steps, device=dev)
    blurpool_rows = (_time_blurpool_forms(arch, len(classes), build, resolved, (images, labels),
                                          warmup=warmup, steps=steps, device=dev)
                     if blurpool_forms else None)
    del images, labels
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
    result = {
        'settings': {'beton': beton, 'arch': arch, 'num_classes': len(classes),
                     'resolution': resolution, 'batch_size': batch_size,
                     'precision': resolved.name, 'channels_last': channels_last,
                     'blurpool': blurpool, 'compile': compile,
                     'compile_mode': compile_mode if compile else None, 'workers': workers,
                     'torch_threads': torch.get_num_threads(),
                     'steps': steps, 'warmup': warmup,
                     'untimed_after_warmup': end_to_end['untimed_after_warmup'],
                     'device': str(dev),
                     'device_name': _device_name(dev), 'torch': torch.__version__,
                     'batches_per_epoch': batches_per_epoch},
        'rows': rows,
        'ratio_end_to_end_vs_model': end_to_end['images_per_sec'] / ceiling['images_per_sec'],
    }
    if blurpool_rows:
        result['blurpool_rows'] = blurpool_rows
    if compile_rows:
        result['compile_rows'] = compile_rows
    if ddp_rows:
        result['ddp_rows'] = ddp_rows
    return result


def format_train_table(results: dict | list[dict]) -> str:
    """A plain-text table of one :func:`bench_train` result, or of several (one per
    resolution) run with otherwise equal settings."""
    results = [results] if isinstance(results, dict) else results
    s = results[0]['settings']
    options = [f"precision {s['precision']}",
               'channels-last' if s['channels_last'] else 'contiguous',
               'blurpool' if s['blurpool'] else 'no blurpool',
               f"compiled ({s.get('compile_mode') or 'default'})" if s['compile'] else 'eager']
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
    # the model-alone rows asked for beside the pair: (key, title, the column after
    # images/sec as (header, width, field, format), the ratio's header and field)
    extras = (('ddp_rows', 'DDP, one process, one after the other',
               ('steps', 6, 'steps', 'd'), '/ model alone', 'vs_plain'),
              ('compile_rows', 'torch.compile mode, one after the other',
               ('first step s', 13, 'first_step_s', '.1f'), '/ model alone', 'vs_eager'),
              ('blurpool_rows', 'blurpool form, one after the other',
               ('steps', 6, 'steps', 'd'), '/ reference', 'vs_reference'))
    for key, title, (header, width, field, fmt), ratio_header, ratio in extras:
        if not any(key in result for result in results):
            continue
        lines.append(f"{'res':>4} {title:<44} {'images/sec':>11} {header:>{width}} "
                     f"{ratio_header:>14}")
        for result in results:
            for row in result.get(key, ()):
                lines.append(f"{result['settings']['resolution']:>4} {row['measurement']:<44} "
                             f"{row['images_per_sec']:>11.1f} {row[field]:>{width}{fmt}} "
                             f"{row[ratio]:>14.3f}")
    return '\n'.join(lines)
