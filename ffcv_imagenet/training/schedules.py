"""Learning-rate and resolution schedules as pure functions.

Learning rates are functions of the iteration (the optimizer step count, starting at
0), so a resumed run recomputes exactly the value an uninterrupted run would use,
and the trainer sets the rate on every step rather than once per epoch:

    lr_at = lr_schedule('cyclic', peak_lr=1.7, epochs=88, steps_per_epoch=313,
                        peak_epoch=2)
    lr_at(0), lr_at(626), lr_at(88 * 313)   # 0.0, 1.7, 0.0

``start_fraction`` starts a linear ramp from 0 (the cyclic rise, the warm-ups of
step and cosine) at that fraction of the peak instead (ffcv-imagenet's trainer starts
at 1e-4). ``interpolate_epochs`` computes a schedule at whole epochs only and joins the
values linearly over each epoch's steps, as ffcv-imagenet's trainer does; for cyclic
with a whole-epoch peak that is the same curve, for step it spreads each decay (and the
final drop to 0) over the epoch before it.

Resolution is a function of the epoch: :func:`resolution_at` (a linear ramp), or
:class:`Stages` (a list of stages, each with its own resolution and batch size).
With stages, epochs have different numbers of steps, so the schedules are written as
functions of progress (fractional epochs) and :class:`Stages` maps an iteration to
its progress (see :func:`staged_lr`).
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

SCHEDULES = ('step', 'cyclic', 'cosine', 'onecycle')


def _warmup(epoch: float, warmup_epochs: float, start_fraction: float = 0.0) -> float:
    """Linear warm-up factor: ``start_fraction`` at epoch 0, 1 from ``warmup_epochs``
    on."""
    if warmup_epochs <= 0 or epoch >= warmup_epochs:
        return 1.0
    return start_fraction + (1 - start_fraction) * epoch / warmup_epochs


def step_lr(epoch: float, *, peak_lr: float, epochs: float, step_length: float,
            step_ratio: float, warmup_epochs: float = 0.0,
            start_fraction: float = 0.0) -> float:
    """``peak_lr`` multiplied by ``step_ratio`` every ``step_length`` epochs, after an
    optional linear warm-up from ``start_fraction * peak_lr``; 0 once ``epochs`` are
    done."""
    if epoch >= epochs:
        return 0.0
    return (peak_lr * step_ratio ** math.floor(epoch / step_length)
            * _warmup(epoch, warmup_epochs, start_fraction))


def cyclic_lr(epoch: float, *, peak_lr: float, epochs: float, peak_epoch: float,
              start_fraction: float = 0.0) -> float:
    """Triangle: linear from ``start_fraction * peak_lr`` at epoch 0 up to ``peak_lr``
    at ``peak_epoch``, then linear down to 0 at ``epochs``."""
    if epoch >= epochs:
        return 0.0
    if epoch < peak_epoch:
        return peak_lr * _warmup(max(epoch, 0.0), peak_epoch, start_fraction)
    return peak_lr * (epochs - epoch) / (epochs - peak_epoch)


def _cosine_between(start: float, end: float, progress: float) -> float:
    """Half a cosine from ``start`` (progress 0) to ``end`` (progress 1)."""
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


def cosine_lr(epoch: float, *, peak_lr: float, epochs: float, warmup_epochs: float = 0.0,
              min_lr: float = 0.0, start_fraction: float = 0.0) -> float:
    """Linear warm-up from ``start_fraction * peak_lr`` to ``peak_lr`` over
    ``warmup_epochs``, then half a cosine from ``peak_lr`` down to ``min_lr`` at
    ``epochs``."""
    if epoch < warmup_epochs:
        return peak_lr * _warmup(epoch, warmup_epochs, start_fraction)
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
                **shape) -> Callable[[int], float]:
    """Returns ``lr_at(iteration) -> learning rate`` for schedule ``name`` when every
    epoch has ``steps_per_epoch`` optimizer steps; the other arguments as in
    :func:`epoch_schedule`.
    Raises:
        ValueError: see :func:`epoch_schedule`; or steps_per_epoch < 1.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}")
    by_epoch = epoch_schedule(name, peak_lr=peak_lr, epochs=epochs, **shape)
    return lambda iteration: by_epoch(iteration / steps_per_epoch)


def epoch_schedule(name: str, *, peak_lr: float, epochs: int, peak_epoch: float = 2.0,
                   warmup_epochs: float = 0.0, step_length: float = 30.0,
                   step_ratio: float = 0.1, min_lr: float = 0.0, pct_start: float = 0.25,
                   div_factor: float = 25.0, final_div_factor: float = 1e4,
                   start_fraction: float = 0.0,
                   interpolate_epochs: bool = False) -> Callable[[float], float]:
    """Returns ``lr_by_epoch(progress) -> learning rate`` for schedule ``name``, where
    progress is in epochs and may be fractional (3.5: half-way through the fourth).

    Args:
        name: one of :data:`SCHEDULES`.
        epochs: length of the whole run.
        peak_epoch: (cyclic) epoch of the peak; warmup_epochs: (step, cosine) linear
            warm-up length; step_length, step_ratio: (step) decay period in epochs and
            factor; min_lr: (cosine) final value; pct_start, div_factor,
            final_div_factor: (onecycle) rising fraction of the run, start = peak /
            div_factor, end = start / final_div_factor. Epoch values may be fractional.
        start_fraction: (cyclic, and the warm-ups of step and cosine) the ramp starts
            at this fraction of the peak, in [0, 1).
        interpolate_epochs: the schedule's values at whole epochs, joined linearly in
            between (ffcv-imagenet's trainer), instead of its value at every fraction.
    Raises:
        ValueError: an unknown name or inconsistent lengths, naming the value.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    _check_start_fraction(name, start_fraction)
    if name == 'step':
        if step_length <= 0:
            raise ValueError(f"step_length must be positive, got {step_length}")
        by_epoch = partial(step_lr, peak_lr=peak_lr, epochs=epochs, step_length=step_length,
                           step_ratio=step_ratio, warmup_epochs=warmup_epochs,
                           start_fraction=start_fraction)
    elif name == 'cyclic':
        if not 0 < peak_epoch < epochs:
            raise ValueError(f"peak_epoch must lie strictly between 0 and epochs={epochs}, "
                             f"got {peak_epoch}")
        by_epoch = partial(cyclic_lr, peak_lr=peak_lr, epochs=epochs, peak_epoch=peak_epoch,
                           start_fraction=start_fraction)
    elif name == 'cosine':
        if not 0 <= warmup_epochs < epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs={epochs}), "
                             f"got {warmup_epochs}")
        by_epoch = partial(cosine_lr, peak_lr=peak_lr, epochs=epochs,
                           warmup_epochs=warmup_epochs, min_lr=min_lr,
                           start_fraction=start_fraction)
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
    return partial(_between_epochs, by_epoch) if interpolate_epochs else by_epoch


def _check_start_fraction(name: str, start_fraction: float) -> None:
    if not 0 <= start_fraction < 1:
        raise ValueError(f"start_fraction must be in [0, 1), got {start_fraction}")
    if name == 'onecycle' and start_fraction:
        raise ValueError("start_fraction does not apply to onecycle, which starts at "
                         "peak / div_factor")


def _between_epochs(by_epoch: Callable[[float], float], progress: float) -> float:
    """``by_epoch`` at the whole epochs around ``progress``, interpolated linearly."""
    epoch = math.floor(progress)
    start, fraction = by_epoch(epoch), progress - epoch
    if fraction == 0:
        return start
    return start + (by_epoch(epoch + 1) - start) * fraction


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


@dataclass(frozen=True)
class Stage:
    """From 0-based epoch ``epoch`` on: square training images of ``resolution``
    pixels, ``batch`` images per step per process."""
    epoch: int
    resolution: int
    batch: int


class Stages:
    """Staged progressive resizing: each stage sets the resolution and the per-process
    batch size from its first epoch on (bigger batches of small images keep the memory
    flat while the image grows). Stages that start after a run of ``epochs`` are
    allowed (a shortened run never reaches them). Epochs then differ in their number of optimizer steps;
    this class maps iterations to progress (fractional epochs) and back.

        stages = Stages.parse('0:64:256, 30:128:128, 50:224:64', epochs=90)
        stages.at(45)                              # Stage(epoch=30, resolution=128, batch=128)
        stages.bind(lambda batch: 1_281_167 // (8 * batch))   # steps per epoch, 8 GPUs
        stages.progress(stages.first_iteration(30) + 10)       # 30 + 10 / steps(30)
    """

    def __init__(self, stages: list[Stage], epochs: int):
        if not stages or stages[0].epoch != 0:
            raise ValueError("the first stage must start at epoch 0")
        for before, stage in zip(stages, stages[1:]):
            if stage.epoch <= before.epoch:
                raise ValueError(f"stage epochs must increase, got {before.epoch} then "
                                 f"{stage.epoch}")
        for stage in stages:
            if stage.resolution < 8 or stage.batch < 1:
                raise ValueError(f"stage at epoch {stage.epoch}: need a resolution of at "
                                 f"least 8 pixels and a batch of at least 1")
        self.stages, self.epochs = list(stages), epochs
        self._starts: list[int] = []  # first iteration of each epoch, then the end

    @classmethod
    def parse(cls, text: str, epochs: int) -> 'Stages':
        """'epoch:pixels:batch' stages separated by commas, epochs 0-based.
        Raises:
            ValueError: a malformed or inconsistent list, naming the part."""
        stages = []
        for part in filter(None, (p.strip() for p in text.split(','))):
            fields = part.split(':')
            if len(fields) != 3 or not all(f.strip().isdigit() for f in fields):
                raise ValueError(f"expected 'epoch:pixels:batch' stages separated by "
                                 f"commas, got {part!r}")
            stages.append(Stage(*(int(f) for f in fields)))
        return cls(stages, epochs)

    def at(self, epoch: int) -> Stage:
        """The stage in force in 0-based ``epoch``."""
        index = bisect.bisect_right([s.epoch for s in self.stages], epoch) - 1
        return self.stages[max(index, 0)]

    def bind(self, steps_for_batch: Callable[[int], int]) -> 'Stages':
        """Fixes the number of optimizer steps of an epoch at each batch size (it
        depends on the dataset and the number of processes); returns self."""
        self._starts = [0]
        for epoch in range(self.epochs):
            self._starts.append(self._starts[-1] + steps_for_batch(self.at(epoch).batch))
        return self

    def first_iteration(self, epoch: int) -> int:
        """Optimizer steps taken before 0-based ``epoch`` (needs :meth:`bind`)."""
        return self._starts[min(epoch, self.epochs)]

    def progress(self, iteration: int) -> float:
        """Epochs done (fractional) after ``iteration`` steps (needs :meth:`bind`)."""
        epoch = min(bisect.bisect_right(self._starts, iteration) - 1, self.epochs - 1)
        steps = self._starts[epoch + 1] - self._starts[epoch]
        return epoch + (iteration - self._starts[epoch]) / steps


def staged_lr(by_epoch: Callable[[float], float], stages: Stages,
              scale_for_batch: Callable[[int], float]) -> Callable[[int], float]:
    """``lr_at(iteration)`` for a staged run: the schedule's value at the iteration's
    progress, times ``scale_for_batch(batch)`` of the stage in force (the recipe's
    scaling rule, e.g. linear in the global batch). ``stages`` must be bound."""
    def lr_at(iteration: int) -> float:
        progress = stages.progress(iteration)
        batch = stages.at(min(int(progress), stages.epochs - 1)).batch
        return by_epoch(progress) * scale_for_batch(batch)
    return lr_at
