"""Where an epoch's wall-clock time goes: waiting for the loader, the first steps at
input shapes the model has not run at before (compilation), checkpoint writes, and
validation.

Every reading is the host's wall clock (``time.perf_counter``). On a GPU, kernels
run after the host has launched them, so a host interval says how long the host was
busy, not the GPU. The device is waited for only where an interval must hold its
GPU work: before and after the first step at each new input shape (a few times per
run), and wherever the loop already waits (the loss exchange every ``log_every``
steps, the end of the epoch). The sum of the steps' intervals over an epoch is
therefore the GPU's time, and the first step at a new shape is timed whole.

The fields of :meth:`PassTimer.record`, all in seconds:

- ``data_wait_s``: time blocked in ``next()`` of the train loader. On a GPU the
  device may still be running queued steps meanwhile, so this bounds from above the
  time the GPU starved.
- ``first_wait_s``: the part of ``data_wait_s`` spent waiting for the pass's first
  batch (the loader's start; in a process's first epoch, numba's compilation of the
  pipeline too).
- ``compile_s``: for each step that was the first at an input shape (batch,
  channels, height, width) new to the process: its time minus the mean time of the
  pass's other steps, never below 0. With ``model.compile=1`` this is
  ``torch.compile``'s tracing and code generation for that shape; in eager mode, the
  first call's own set-up (cuDNN's autotuning, lazy allocations), near 0. A pass with
  no other step counts the first step whole.
- ``checkpoint_s``: rank 0's checkpoint writes during the epoch, inside the pass (a
  time-based ``last.pt``) and after it. The other ranks do not wait for an epoch's
  write at a barrier: they meet rank 0 at the next epoch's first gradient exchange,
  where rank 0's clock already holds the write.
- ``val_s``: validation after the pass (0 without one).
- ``epoch_wall_s``: from the pass's start to the end of the epoch's checkpoint
  writes: ``epoch_time`` plus validation, the writes after the pass, and the epoch's
  bookkeeping (BatchNorm broadcast, finiteness check, log line).

By construction ``data_wait_s + compile_s`` and the in-pass writes fit inside
``epoch_time``, and ``data_wait_s + compile_s + val_s + checkpoint_s <=
epoch_wall_s``.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch


def wait_for_device(device: torch.device) -> None:
    """Blocks until ``device`` has run all work queued on it (nothing on the CPU)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


class PassTimer:
    """Times one training pass of the loop: iterate the loader through
    :meth:`batches`, call :meth:`begin_step` and :meth:`end_step` around each
    step's device work, and write checkpoints inside :meth:`checkpoint`.

    Args:
        device: where the steps run (waited for around first steps at a new shape).
        shapes: the input shapes already run in this process; updated. Pass the same
            set to every epoch's timer.
    """

    def __init__(self, device: torch.device, shapes: set | None = None):
        self.device = device
        self.shapes = set() if shapes is None else shapes
        self.data_wait = self.first_wait = self.checkpoint_seconds = 0.0
        self.first_shape_seconds, self.first_shape_steps = 0.0, 0
        self.other_seconds, self.other_steps = 0.0, 0
        self._got: float | None = None  # when the current step's batch arrived
        self._first = False  # the current step is the first at its shape
        self._written = 0.0  # checkpoint seconds inside the current step

    def batches(self, iterable: Iterable) -> Iterator:
        """``iterable``'s items, timing each ``next()`` and the steps between."""
        iterator = iter(iterable)
        while True:
            asked = time.perf_counter()
            if self._got is not None:
                self._close_step(asked)
            try:
                item = next(iterator)
            except StopIteration:
                self.data_wait += time.perf_counter() - asked
                return
            got = time.perf_counter()
            if self._got is None and self.first_shape_steps + self.other_steps == 0:
                self.first_wait = got - asked
            self.data_wait += got - asked
            self._got = got
            yield item

    def begin_step(self, shape: tuple) -> None:
        """Call first thing in a step; ``shape``: its input batch's shape."""
        self._first = tuple(shape) not in self.shapes
        if self._first:
            self.shapes.add(tuple(shape))
            wait_for_device(self.device)  # so that earlier steps' work is not its own
            self._got = time.perf_counter()

    def end_step(self) -> None:
        """Call once the step's device work is launched."""
        if self._first:
            wait_for_device(self.device)

    def _close_step(self, now: float) -> None:
        seconds = now - self._got - self._written
        if self._first:
            self.first_shape_seconds += seconds
            self.first_shape_steps += 1
        else:
            self.other_seconds += seconds
            self.other_steps += 1
        self._got, self._written, self._first = None, 0.0, False

    @contextmanager
    def checkpoint(self):
        """Times the checkpoint writes inside (left out of the step they interrupt)."""
        began = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - began
            self.checkpoint_seconds += seconds
            self._written += seconds

    def compile_seconds(self) -> float:
        """The first steps at new shapes less as many mean other steps, at least 0."""
        steady = self.other_seconds / self.other_steps if self.other_steps else 0.0
        return max(0.0, self.first_shape_seconds - self.first_shape_steps * steady)

    def record(self, val_seconds: float, wall_seconds: float) -> dict:
        """The epoch's log fields (see the module's docstring), in seconds."""
        return {'data_wait_s': self.data_wait, 'first_wait_s': self.first_wait,
                'compile_s': self.compile_seconds(), 'val_s': val_seconds,
                'checkpoint_s': self.checkpoint_seconds, 'epoch_wall_s': wall_seconds}
