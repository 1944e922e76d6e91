"""Learning-rate and resolution schedules as pure functions.

Learning rates are functions of the iteration (the optimizer step count, starting at
0), so a resumed run recomputes exactly the value an uninterrupted run would use,
and the trainer sets the rate on every step rather than once per epoch:

    lr_at = lr_schedule('cyclic', peak_lr=1.7, epochs=88, steps_per_epoch=313,
                        peak_epoch=2)
    lr_at(0), lr_at(626), lr_at(88 * 313)   # 0.0, 1.7, 0.0

Resolution is a function of the epoch: :func:`resolution_at`.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable

SCHEDULES = ('step', 'cyclic', 'cosine', 'onecycle')


def _warmup(epoch: float, warmup_epochs: float) -> float:
    """Linear warm-up factor: 0 at epoch 0, 1 from ``warmup_epochs`` on."""
    if warmup_epochs <= 0 or epoch >= warmup_epochs:
        return 1.0
    return epoch / warmup_epochs


def step_lr(epoch: float, *, peak_lr: float, epochs: float, step_length: float,
            step_ratio: float, warmup_epochs: float = 0.0) -> float:
    """``peak_lr`` multiplied by ``step_ratio`` every ``step_length`` epochs, after an
    optional linear warm-up; 0 once ``epochs`` are done."""
    if epoch >= epochs:
        return 0.0
    return peak_lr * step_ratio ** math.floor(epoch / step_length) * _warmup(epoch, warmup_epochs)


def cyclic_lr(epoch: float, *, peak_lr: float, epochs: float, peak_epoch: float) -> float:
    """Triangle: linear from 0 at epoch 0 up to ``peak_lr`` at ``peak_epoch``, then
    linear down to 0 at ``epochs``."""
    if epoch <= 0 or epoch >= epochs:
        return 0.0
    if epoch < peak_epoch:
        return peak_lr * epoch / peak_epoch
    return peak_lr * (epochs - epoch) / (epochs - peak_epoch)


def _cosine_between(start: float, end: float, progress: float) -> float:
    """Half a cosine from ``start`` (progress 0) to ``end`` (progress 1)."""
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


def cosine_lr(epoch: float, *, peak_lr: float, epochs: float, warmup_epochs: float = 0.0,
              min_lr: float = 0.0) -> float:
    """Linear warm-up from 0 to ``peak_lr`` over ``warmup_epochs``, then half a cosine
    from ``peak_lr`` down to ``min_lr`` at ``epochs``."""
    if epoch < warmup_epochs:
        return peak_lr * _warmup(epoch, warmup_epochs)
    if epoch >= epochs:
        return min_lr
    return _cosine_between(peak_lr, min_lr, (epoch - warmup_epochs) / (epochs - warmup_epochs))


def onecycle_lr(epoch: float, *, peak_lr: float, epochs: float, pct_start: float,
                div_factor: float, final_div_factor: float) -> float:
    """One cycle (Smith & Topin 2018), with the shape and parameter names of
    ``torch.optim.lr_scheduler.OneCycleLR``: half a cosine from ``peak_lr / div_factor``
    up to ``peak_lr`` over the first ``pct_start`` of the run, then half a cosine down
    to ``peak_lr / div_factor / final_div_factor`` at ``epochs``."""
    initial = peak_lr / div_factor
    rise = pct_start * epochs
    if epoch < rise:
        return _cosine_between(initial, peak_lr, epoch / rise)
    if epoch >= epochs:
        return initial / final_div_factor
    return _cosine_between(peak_lr, initial / final_div_factor, (epoch - rise) / (epochs - rise))


def lr_schedule(name: str, *, peak_lr: float, epochs: int, steps_per_epoch: int,
                peak_epoch: float = 2.0, warmup_epochs: float = 0.0,
                step_length: float = 30.0, step_ratio: float = 0.1,
                min_lr: float = 0.0, pct_start: float = 0.25, div_factor: float = 25.0,
                final_div_factor: float = 1e4) -> Callable[[int], float]:
    """Returns ``lr_at(iteration) -> learning rate`` for schedule ``name``.

    Args:
        name: one of :data:`SCHEDULES`.
        epochs: length of the whole run; steps_per_epoch: optimizer steps per epoch.
        peak_epoch: (cyclic) epoch of the peak; warmup_epochs: (step, cosine) linear
            warm-up length; step_length, step_ratio: (step) decay period in epochs and
            factor; min_lr: (cosine) final value; pct_start, div_factor,
            final_div_factor: (onecycle) rising fraction of the run, start = peak /
            div_factor, end = start / final_div_factor. Epoch values may be fractional.
    Raises:
        ValueError: an unknown name or inconsistent lengths, naming the value.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}")
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if name == 'step':
        if step_length <= 0:
            raise ValueError(f"step_length must be positive, got {step_length}")
        by_epoch = partial(step_lr, peak_lr=peak_lr, epochs=epochs, step_length=step_length,
                           step_ratio=step_ratio, warmup_epochs=warmup_epochs)
    elif name == 'cyclic':
        if not 0 < peak_epoch < epochs:
            raise ValueError(f"peak_epoch must lie strictly between 0 and epochs={epochs}, "
                             f"got {peak_epoch}")
        by_epoch = partial(cyclic_lr, peak_lr=peak_lr, epochs=epochs, peak_epoch=peak_epoch)
    elif name == 'cosine':
        if not 0 <= warmup_epochs < epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs={epochs}), "
                             f"got {warmup_epochs}")
        by_epoch = partial(cosine_lr, peak_lr=peak_lr, epochs=epochs,
                           warmup_epochs=warmup_epochs, min_lr=min_lr)
    elif name == 'onecycle':
        if not 0 < pct_start < 1:
            raise ValueError(f"pct_start must lie strictly between 0 and 1, got {pct_start}")
        if div_factor < 1 or final_div_factor < 1:
            raise ValueError(f"div_factor and final_div_factor must be at least 1, got "
                             f"{div_factor} and {final_div_factor}")
        by_epoch = partial(onecycle_lr, peak_lr=peak_lr, epochs=epochs, pct_start=pct_start,
                           div_factor=div_factor, final_div_factor=final_div_factor)
    else:
        raise ValueError(f"unknown lr schedule '{name}' (choose from {', '.join(SCHEDULES)})")
    return lambda iteration: by_epoch(iteration / steps_per_epoch)


def resolution_at(epoch: int, *, min_res: int, max_res: int, start_ramp: int,
                  end_ramp: int, multiple: int = 32) -> int:
    """Training resolution (pixels, square) for ``epoch`` (0-based): ``min_res`` up to
    ``start_ramp``, ``max_res`` from ``end_ramp`` on, linear in between, rounded to
    the nearest multiple of ``multiple`` and kept within [min_res, max_res]."""
    if not 0 < min_res <= max_res:
        raise ValueError(f"need 0 < min_res <= max_res, got {min_res} and {max_res}")
    if start_ramp > end_ramp:
        raise ValueError(f"need start_ramp <= end_ramp, got {start_ramp} and {end_ramp}")
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    exact = min_res + (max_res - min_res) * (epoch - start_ramp) / (end_ramp - start_ramp)
    rounded = int(math.floor(exact / multiple + 0.5)) * multiple
    return min(max_res, max(min_res, rounded))
