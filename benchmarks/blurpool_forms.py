"""Milliseconds per forward + backward of one ResNet with BlurPool off and with each
form of its blur (``ffcv_imagenet.training.blurpool``), side by side in one run.

    python benchmarks/blurpool_forms.py [--arch resnet50] [--resolution 64 128]
        [--batch-size 8] [--rounds 5] [--steps 3] [--compile] [--threads 2]

Rows: ``off`` (no blur), ``reference`` (the blur at every position, then the strided
conv: the form before the cheaper ones), ``conv`` (the default: the blur before a 1x1
strided conv computed only where that conv reads it, as a strided depthwise conv) and
``shifted`` (the same positions, the blur as sums of shifted views, which
``torch.compile`` can fuse with the work around it). All get the same weights (seed 0), train mode,
channels-last, float32, a fixed random batch, cross-entropy on random labels; the
step is forward, loss and backward (no optimizer). Each variant first runs two
untimed steps (compilation with ``--compile``, whose seconds are printed), then the
variants take turns, ``--steps`` timed steps each per round, for ``--rounds`` rounds:
the machine's speed drifts during a run. A variant's figure is the median over rounds
of its mean step; ``/ reference`` is the median over rounds of the paired ratios.
``--compile`` adds the same rows compiled (``dynamic=False``, as training compiles),
compiled afresh per resolution. Prints a Markdown table.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ffcv_imagenet.training.models import build_model, set_blur_form

VARIANTS = ('off', 'reference', 'conv', 'shifted')

parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
parser.add_argument('--arch', default='resnet50', choices=('resnet18', 'resnet50'))
parser.add_argument('--resolution', type=int, nargs='+', default=[64, 128], help='pixels')
parser.add_argument('--batch-size', type=int, default=8)
parser.add_argument('--rounds', type=int, default=5)
parser.add_argument('--steps', type=int, default=3, help='timed steps per variant per round')
parser.add_argument('--compile', action='store_true', help='also time the compiled models')
parser.add_argument('--threads', type=int, default=torch.get_num_threads())
args = parser.parse_args()
torch.set_num_threads(args.threads)


def fresh(variant: str, compiled: bool):
    torch.manual_seed(0)
    model = build_model(args.arch, 1000, blurpool=variant != 'off', channels_last=True).train()
    if variant != 'off':
        set_blur_form(model, variant)
    return torch.compile(model, dynamic=False) if compiled else model


def step(model, images, labels) -> None:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), labels).backward()


def measure(resolution: int, compiled: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch_size, 3, resolution, resolution, generator=gen).to(
        memory_format=torch.channels_last)
    labels = torch.randint(1000, (args.batch_size,), generator=gen)
    if compiled:
        torch.compiler.reset()  # each resolution's code from scratch, within recompile limits
    models, warmup = {}, {}
    for variant in VARIANTS:
        models[variant] = fresh(variant, compiled)
        start = time.perf_counter()
        for _ in range(2):
            step(models[variant], images, labels)
        warmup[variant] = time.perf_counter() - start
    per_round = {variant: [] for variant in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            start = time.perf_counter()
            for _ in range(args.steps):
                step(models[variant], images, labels)
            per_round[variant].append((time.perf_counter() - start) / args.steps * 1e3)
    reference = per_round['reference']
    return [{'resolution': resolution, 'mode': 'compiled' if compiled else 'eager',
             'variant': variant, 'ms': statistics.median(times),
             'vs_reference': statistics.median(t / r for t, r in zip(times, reference)),
             'warmup_s': warmup[variant]} for variant, times in per_round.items()]


rows = []
for resolution in args.resolution:
    for compiled in (False, True) if args.compile else (False,):
        rows += measure(resolution, compiled)
print(f'{args.arch}, batch {args.batch_size}, float32, channels-last, train mode, '
      f'{torch.get_num_threads()} threads, torch {torch.__version__}; forward + loss + '
      f'backward; median of {args.rounds} rounds of {args.steps} steps\n')
print('| px | mode | blurpool | ms / step | / reference | 2 warm-up steps (s) |')
print('|---:|---|---|---:|---:|---:|')
for row in rows:
    print(f"| {row['resolution']} | {row['mode']} | {row['variant']} | {row['ms']:.1f} | "
          f"{row['vs_reference']:.3f} | {row['warmup_s']:.1f} |")
