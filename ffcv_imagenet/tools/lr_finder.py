"""Learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural
Networks", section 3.3) on a recipe's own network, data and loss.

    python -m ffcv_imagenet lr-finder -C rn18_cpu_demo.yaml \
        --lr_finder.steps=100

A fresh network (initialised from ``training.seed``) trains for ``steps`` optimizer
steps while the learning rate grows exponentially from ``start_lr`` to ``end_lr``;
the test ends early once the smoothed loss passes ``diverge`` times its minimum.
Batches, augmentation, mixing, label smoothing, precision and weight decay are the
recipe's, at its first resolution (``resolution.min_res``). It reads and writes no
checkpoint: only ``lr_finder.json`` (the curve and the suggestion) and
``lr_finder.png`` in ``lr_finder.out`` (default ``<logging.folder>/lr_finder``).

The suggestion is the rate where the smoothed loss falls fastest per unit of
log(lr), searched before the smoothed minimum: a starting point, not an answer.
Smith's own rule takes the peak of a cyclic schedule a little below the point
where the loss stops falling. The printed ``lr.lr`` converts the suggestion to the
recipe's per-``lr.reference_batch`` convention. Runs as a single process.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
from fastargs import Param, Section
from matplotlib.figure import Figure

from ..cli.config import ConfigError, parse_config
from ..cli.recipe import build_parts, setup_distributed
from ..cli.runner import exit_code
from ..cli.train_config import SECTIONS
from ..data.read.loaders import endless_batches
from ..training.logs import Progress
from ..training.step import prepare_batch, train_step
from ..training.optim import set_lr
from ..training.plots import save_png

Section('lr_finder', 'learning-rate range test').params(
    start_lr=Param(float, 'first learning rate (for the global batch)', default=1e-4),
    end_lr=Param(float, 'last learning rate (for the global batch)', default=10.0),
    steps=Param(int, 'optimizer steps', default=100),
    beta=Param(float, 'loss smoothing: exponential average factor', default=0.9),
    diverge=Param(float, 'stop once the smoothed loss exceeds this times its minimum',
                  default=4.0),
    out=Param(str, "output folder ('' = <logging.folder>/lr_finder)", default=''),
)


def lr_at_step(step: int, steps: int, start_lr: float, end_lr: float) -> float:
    """Exponential ramp: ``start_lr`` at step 0, ``end_lr`` at step ``steps - 1``."""
    return start_lr * (end_lr / start_lr) ** (step / max(steps - 1, 1))


def smooth(losses: list[float], beta: float) -> list[float]:
    """Exponential moving average with bias correction, so early values are not
    pulled towards zero."""
    average, out = 0.0, []
    for i, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta ** i))
    return out


def suggest_lr(lrs: list[float], smoothed: list[float]) -> tuple[float, int, str]:
    """(suggested lr, its index, the rule in words): the steepest descent of the
    smoothed loss against log(lr), among the points before its minimum.
    Raises:
        ValueError: fewer than 3 points, or the loss never fell.
    """
    if len(lrs) < 3:
        raise ValueError(f"need at least 3 points to find a slope, got {len(lrs)}")
    lowest = int(np.argmin(smoothed))
    if lowest < 2:
        raise ValueError("the smoothed loss never fell; lower lr_finder.start_lr")
    slopes = np.gradient(np.asarray(smoothed[:lowest + 1]), np.log(lrs[:lowest + 1]))
    index = int(np.argmin(slopes))
    rule = (f"steepest descent of the smoothed loss per unit of log(lr) at step {index}, "
            f"before its minimum at lr {lrs[lowest]:.3g} (step {lowest})")
    return float(lrs[index]), index, rule


def range_test(model, loader, optimizer, scaler, precision, *, start_lr: float,
               end_lr: float, steps: int, beta: float = 0.9, diverge: float = 4.0,
               label_smoothing: float = 0.0, mixer=None, show_progress: bool = False) -> dict:
    """Trains ``model`` in place for up to ``steps`` steps with the exponential lr
    ramp; returns ``lr``, ``loss`` and ``smoothed`` (one entry per step taken) and
    ``stopped`` ('steps', 'diverged' or 'non-finite')."""
    model.train()
    curve = {'lr': [], 'loss': [], 'smoothed': [], 'stopped': 'steps'}
    progress = Progress(range(steps), steps, show_progress, 'lr range test')
    with endless_batches(loader) as batches:
        for step, (images, labels) in zip(progress, batches):
            lr = lr_at_step(step, steps, start_lr, end_lr)
            set_lr(optimizer, lr)
            images, targets, _, smoothing = prepare_batch(images, labels, mixer,
                                                          label_smoothing)
            loss = train_step(model, images, targets, optimizer, scaler, precision,
                              smoothing)[0].item()
            if not math.isfinite(loss):
                curve['stopped'] = 'non-finite'
                break
            curve['lr'].append(lr)
            curve['loss'].append(loss)
            curve['smoothed'] = smooth(curve['loss'], beta)
            progress.show(lr=lr, loss=curve['smoothed'][-1])
            if curve['smoothed'][-1] > diverge * min(curve['smoothed']):
                curve['stopped'] = 'diverged'
                break
    progress.close()
    return curve


def plot_curve(curve: dict, suggested: float | None, path: Path) -> Path:
    """Loss (raw and smoothed) against learning rate (log axis) as a PNG."""
    fig = Figure(figsize=(6.4, 4.0), layout='constrained')
    ax = fig.add_subplot()
    ax.plot(curve['lr'], curve['loss'], color='C0', alpha=0.3, label='loss per step')
    ax.plot(curve['lr'], curve['smoothed'], color='C0', label='smoothed loss')
    if suggested is not None:
        ax.axvline(suggested, color='C3', linestyle='--', label=f'suggested lr {suggested:.3g}')
    ax.set_xscale('log')
    # single diverging steps would squash the part of the curve that matters
    ax.set_ylim(0.9 * min(curve['smoothed']), 2 * curve['smoothed'][0])
    ax.set(title='Learning-rate range test', xlabel='learning rate (global batch)',
           ylabel='training loss')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend()
    return save_png(fig, path)


def _check_settings(config) -> None:
    start, end = config['lr_finder.start_lr'], config['lr_finder.end_lr']
    if not 0 < start < end:
        raise ConfigError(f"lr_finder.start_lr and end_lr need 0 < start_lr < end_lr, got "
                          f"{start} and {end}")
    if config['lr_finder.steps'] < 3:
        raise ConfigError(f"lr_finder.steps must be at least 3, got {config['lr_finder.steps']}")
    if not 0 <= config['lr_finder.beta'] < 1:
        raise ConfigError(f"lr_finder.beta must be in [0, 1), got {config['lr_finder.beta']}")
    if config['lr_finder.diverge'] <= 1:
        raise ConfigError(f"lr_finder.diverge must exceed 1, got {config['lr_finder.diverge']}")


def main(argv: list[str] | None = None) -> int:
    config = parse_config(__doc__.splitlines()[0], argv, SECTIONS + ('lr_finder',))
    _check_settings(config)
    if int(os.environ.get('WORLD_SIZE', 1)) > 1:
        raise ConfigError("the LR finder runs as one process; start it with python, "
                          "not torchrun")
    parts = build_parts(config, setup_distributed(config))
    out = Path(config['lr_finder.out'] or Path(config['logging.folder']) / 'lr_finder')
    out.mkdir(parents=True, exist_ok=True)
    curve = range_test(parts.model, parts.train_loader, parts.optimizer, parts.scaler,
                       parts.precision, start_lr=config['lr_finder.start_lr'],
                       end_lr=config['lr_finder.end_lr'], steps=config['lr_finder.steps'],
                       beta=config['lr_finder.beta'], diverge=config['lr_finder.diverge'],
                       label_smoothing=config['training.label_smoothing'],
                       mixer=parts.mixer, show_progress=bool(config['logging.progress']))
    try:
        suggested, _, rule = suggest_lr(curve['lr'], curve['smoothed'])
    except ValueError as err:
        suggested, rule = None, f"no suggestion: {err}"
    per_reference = (suggested * config['lr.reference_batch'] / parts.batch
                     if suggested is not None else None)
    result = {**curve, 'suggested_lr': suggested, 'suggested_lr_per_reference_batch':
              per_reference, 'rule': rule, 'global_batch': parts.batch,
              'reference_batch': config['lr.reference_batch']}
    (out / 'lr_finder.json').write_text(json.dumps(result, indent=1) + '\n')
    written = [out / 'lr_finder.json']
    if curve['lr']:  # a first loss that is already non-finite leaves nothing to draw
        written.insert(0, plot_curve(curve, suggested, out / 'lr_finder.png'))
    print(f"{len(curve['lr'])} steps (ended by: {curve['stopped']}); curve in "
          f"{' and '.join(map(str, written))}")
    if suggested is None:
        print(rule)
        return 1
    print(f"suggested lr {suggested:.4g} for a global batch of {parts.batch} "
          f"(lr.lr={per_reference:.4g} per {config['lr.reference_batch']} images)\n"
          f"rule: {rule}")
    return 0


def run(argv: list[str] | None = None) -> int:
    """:func:`main` with a bad config turned into one line and exit code 2."""
    return exit_code(lambda: main(argv))


if __name__ == '__main__':
    sys.exit(run())
