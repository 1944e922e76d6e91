"""Exponential moving average (EMA) of a model's weights, for validation and export.

After every optimizer step the trainer calls ``ModelEMA.update(model, step)``:

    ema_p = d * ema_p + (1 - d) * p        for every parameter p
    ema_b = d * ema_b + (1 - d) * b        for every floating-point buffer b
                                           (buffers='average'; 'copy': ema_b = b)

Choices and why:

* The averaged copy is always fp32, whatever the model's precision: with a decay
  of 0.9998 each update moves a weight by 2e-4 of the difference, which bf16's
  8-bit mantissa would round away. It is a ``deepcopy``, so a channels-last model
  gives a channels-last EMA and the two can run the same kernels.
* Buffers (BatchNorm ``running_mean``/``running_var``) are averaged with the same
  decay by default, as torchvision's reference (``use_buffers=True``) and timm do:
  the raw model's statistics describe the activations of the raw weights, which the
  averaged weights, lagging behind, do not produce; validating the EMA with them made
  it trail the raw weights far more than its half-life explains (BENCHMARKS.md has
  the measurement). ``buffers='copy'`` copies them instead, and ``copy_buffers``
  re-copies them on demand (the trainer does so right before validating the EMA,
  after rank 0's statistics were broadcast to every rank). Integer buffers
  (``num_batches_tracked``) are always copied.
* ``decay`` is per optimizer step. With ``every`` > 1 the average is updated only
  every ``every`` steps with ``decay ** every``, so the averaging horizon, in
  optimizer steps, does not depend on ``every``; ``every`` only trades accuracy of
  the average for time spent updating it.
* ``warmup_steps`` ramps the decay in, ``decay * (1 - exp(-step / warmup_steps))``,
  so that early averages follow the fast-moving model instead of holding on to the
  random initialisation for thousands of steps.
* The update is one ``torch._foreach_lerp_`` over all parameters: on the GPU that
  is a handful of fused kernels instead of two per parameter.
* The step count is passed in by the caller (the global optimizer step) rather than
  counted here, so that a resumed run continues with exactly the same decays; the
  state dict therefore only needs the averaged weights.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    """An fp32 exponential moving average of ``model``'s parameters.

    ``model`` is the plain network (not wrapped in DDP or ``torch.compile``); its
    parameters may be fp32 or lower precision and it may be channels-last.
    ``decay`` is the per-optimizer-step decay, in [0, 1) (e.g. 0.9998: a horizon of
    about 1 / (1 - decay) = 5000 steps). ``warmup_steps`` (in optimizer steps, 0 =
    off) ramps the decay in, see ``decay_at``. ``every`` (>= 1) updates only on
    steps that are a multiple of it, with the decay raised to the power ``every``.

    ``module`` is the averaged copy: fp32 (floating-point parameters and buffers),
    in eval mode, with ``requires_grad`` False on every parameter.
    """

    def __init__(self, model: nn.Module, decay: float, *, warmup_steps: float = 0.0,
                 every: int = 1, buffers: str = 'average'):
        if not 0.0 <= decay < 1.0:  # also refuses NaN
            raise ValueError(f'decay must be in [0, 1), got {decay!r}')
        if not (warmup_steps >= 0.0 and math.isfinite(warmup_steps)):
            raise ValueError(f'warmup_steps must be finite and >= 0, got {warmup_steps!r}')
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f'every must be an integer >= 1, got {every!r}')
        if buffers not in ('average', 'copy'):
            raise ValueError(f"buffers must be 'average' or 'copy', got {buffers!r}")
        self.averages_buffers = buffers == 'average'
        self.decay = float(decay)
        self.warmup_steps = float(warmup_steps)
        self.every = every
        self.module = _fp32_copy(model)
        self._param_names = [name for name, _ in self.module.named_parameters()]
        self._buffer_names = [name for name, _ in self.module.named_buffers()]
        # (model, EMA params, model params, EMA buffers, model buffers), matched once
        # per model rather than by name on every step
        self._pairs: tuple | None = None

    def decay_at(self, step: int) -> float:
        """The per-optimizer-step decay after ``step`` optimizer steps.

        ``decay * (1 - exp(-step / warmup_steps))`` with warm-up (0 at step 0,
        ``decay * (1 - 1/e)`` at ``step == warmup_steps``, then towards ``decay``);
        ``decay`` without.
        """
        if self.warmup_steps == 0.0:
            return self.decay
        return self.decay * (1.0 - math.exp(-step / self.warmup_steps))

    def update(self, model: nn.Module, step: int) -> bool:
        """Average ``model``'s parameters in and copy its buffers, if ``step`` is due.

        Call after every optimizer step with ``step`` = optimizer steps completed so
        far (1, 2, ...; global over the run, so it survives a resume). Does work
        only when ``step % every == 0``, then with ``d = decay_at(step) ** every``:
        ``ema_p = d * ema_p + (1 - d) * p`` for each parameter, and every buffer is
        copied (integer buffers as they are, floating-point ones cast to fp32).
        Returns whether it updated. Raises ValueError, naming the first mismatched
        parameter or buffer, if ``model`` is not structured like the EMA copy.
        """
        if step % self.every != 0:
            return False
        d = self.decay_at(step) ** self.every
        _, ema_params, params, ema_buffers, buffers = self._matched_with(model)
        with torch.no_grad():
            if ema_params:  # the foreach ops refuse empty lists
                if any(p.dtype != torch.float32 for p in params):
                    # .float() keeps the memory format; fp32 parameters skip the copy
                    params = [p.float() for p in params]
                torch._foreach_lerp_(ema_params, params, 1.0 - d)
            if ema_buffers:
                self._update_buffers(ema_buffers, buffers, d)
        return True

    def _update_buffers(self, ema_buffers: list, buffers: list, d: float) -> None:
        if not self.averages_buffers:
            torch._foreach_copy_(ema_buffers, buffers)  # casts to the EMA's dtypes
            return
        floats = [(e, b) for e, b in zip(ema_buffers, buffers) if e.is_floating_point()]
        counts = [(e, b) for e, b in zip(ema_buffers, buffers) if not e.is_floating_point()]
        if floats:
            torch._foreach_lerp_([e for e, _ in floats], [b.float() for _, b in floats],
                                 1.0 - d)
        if counts:
            torch._foreach_copy_([e for e, _ in counts], [b for _, b in counts])

    def copy_buffers(self, model: nn.Module) -> None:
        """Copy every buffer (BatchNorm statistics etc.) of ``model`` into the EMA now.

        Floating-point buffers are cast to fp32, integer ones copied as they are.
        Raises ValueError naming the first mismatched buffer.
        """
        # re-paired on every explicit call (once per validation), so buffers a model
        # replaced since (model.to(...)) are picked up; update() reuses the pairs
        self._pairs = None
        _, _, _, ema_buffers, buffers = self._matched_with(model)
        if ema_buffers:
            with torch.no_grad():
                torch._foreach_copy_(ema_buffers, buffers)  # casts to the EMA's dtypes

    def _matched_with(self, model: nn.Module) -> tuple:
        """The EMA's and ``model``'s parameters and buffers paired in order, checked
        by name and shape the first time a model is seen (ValueError on a mismatch)."""
        if self._pairs is None or self._pairs[0] is not model:
            params = _matched(self.module.named_parameters(), model.named_parameters(),
                              self._param_names, 'parameter')
            buffers = _matched(self.module.named_buffers(), model.named_buffers(),
                               self._buffer_names, 'buffer')
            self._pairs = (model, [e for e, _ in params], [p for _, p in params],
                           [e for e, _ in buffers], [b for _, b in buffers])
        return self._pairs

    def state_dict(self) -> dict:
        """``{'module': averaged weights and buffers, 'decay', 'warmup_steps', 'every'}``.

        The tensors are the EMA's own (not copies), as with ``nn.Module.state_dict``.
        """
        return {'module': self.module.state_dict(), 'decay': self.decay,
                'warmup_steps': self.warmup_steps, 'every': self.every}

    def load_state_dict(self, state: dict) -> None:
        """Load the averaged weights and buffers from ``state['module']``.

        The saved decay settings are ignored: the current ones win, as with the rest
        of the config. The step count comes from the caller, so a resume is exact.
        """
        if 'module' not in state:
            raise ValueError("EMA state dict has no 'module' entry")
        self.module.load_state_dict(state['module'])


def _fp32_copy(model: nn.Module) -> nn.Module:
    ema = copy.deepcopy(model)
    # Tensor.float() keeps the memory format, so a channels-last model stays so.
    ema._apply(lambda t: t.float() if t.is_floating_point() else t)
    for p in ema.parameters():
        p.requires_grad_(False)
        p.grad = None  # deepcopy copies gradients too; the EMA never needs them
    return ema.eval()


def _matched(ema_named, model_named, expected: list[str], kind: str) -> list:
    """[(ema tensor, model tensor)] paired by name; ValueError on the first mismatch."""
    ema_tensors = [t for _, t in ema_named]
    model_named = list(model_named)
    for i, name in enumerate(expected):
        if i >= len(model_named) or model_named[i][0] != name:
            raise ValueError(f'model does not match the EMA: {kind} {name!r} is missing '
                             f'or out of order')
        if model_named[i][1].shape != ema_tensors[i].shape:
            raise ValueError(f'model does not match the EMA: {kind} {name!r} has shape '
                             f'{tuple(model_named[i][1].shape)}, the EMA '
                             f'{tuple(ema_tensors[i].shape)}')
    if len(model_named) > len(expected):
        raise ValueError(f'model does not match the EMA: unexpected {kind} '
                         f'{model_named[len(expected)][0]!r}')
    return [(e, t) for e, (_, t) in zip(ema_tensors, model_named)]
