"""Stopping a run on a scheduler's signal, and how often ``last.pt`` is written.

Clusters stop jobs with SIGTERM (Kubernetes, most schedulers) or SIGUSR1 (Slurm's
``--signal``) some seconds before they kill them. :class:`StopSignals` only records
that such a signal arrived; the training loop looks at the record every few steps,
agrees with the other ranks on one step, writes ``last.pt`` there and ends with
:data:`PREEMPTED_EXIT`, after leaving a ``preempted`` marker in the run folder (under
torchrun, which reports any failed worker as exit code 1, the marker is what a job
script can test).

:class:`CheckpointPeriod` is the one setting for "how often is ``last.pt`` written":
every N epochs, or every N minutes of training (checked at step boundaries, for
machines that die without a warning).
"""
from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

#: exit code of a run that stopped on a signal after saving (sysexits' EX_TEMPFAIL:
#: "try again later", which is what a job script should do)
PREEMPTED_EXIT = 75
MARKER = 'preempted'
DEFAULT_SIGNALS = ('SIGTERM', 'SIGUSR1')


class StopSignals:
    """Records the first of ``names`` (signal names) that arrives while active.

    Use as a context manager around training; the previous handlers come back on
    exit. Outside the main thread (where Python cannot install handlers) it records
    nothing.
    """

    def __init__(self, names: tuple[str, ...] = DEFAULT_SIGNALS):
        self.signals = [getattr(signal, name) for name in names]
        self.received: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name

    def __enter__(self) -> 'StopSignals':
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


class Preempted(Exception):
    """Training stopped on a signal; ``last.pt`` holds the step where all ranks stopped."""

    def __init__(self, signal_name: str, epoch: int, step: int, iteration: int):
        super().__init__(f"stopped by {signal_name} in epoch {epoch + 1} after step {step} "
                         f"(iteration {iteration}); last.pt holds this step")
        self.signal_name, self.epoch, self.step, self.iteration = (signal_name, epoch, step,
                                                                   iteration)


def write_marker(run_dir: str | os.PathLike, stop: Preempted) -> Path:
    """Writes ``<run_dir>/preempted`` (JSON: signal, epoch, step, iteration, time)."""
    path = Path(run_dir) / MARKER
    path.write_text(json.dumps({'signal': stop.signal_name, 'epoch': stop.epoch,
                                'step': stop.step, 'iteration': stop.iteration,
                                'time': time.time()}) + '\n')
    return path


def clear_marker(run_dir: str | os.PathLike) -> dict | None:
    """Removes the marker of an earlier preemption; returns what it recorded (or None)."""
    path = Path(run_dir) / MARKER
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = None
    path.unlink(missing_ok=True)
    return record


_PERIOD = re.compile(r'^\s*(\d+(?:\.\d+)?)\s*(e|ep|epoch|epochs|m|min|h|s)?\s*$')
_SECONDS = {'s': 1, 'm': 60, 'min': 60, 'h': 3600}


@dataclass(frozen=True)
class CheckpointPeriod:
    """Every ``epochs`` epochs (at epoch ends) or every ``seconds`` of training (at
    the first step boundary after that time); exactly one of the two is non-zero."""
    epochs: int = 1
    seconds: float = 0.0

    @classmethod
    def parse(cls, text: str | int) -> 'CheckpointPeriod':
        """'2' or '2e' -> every 2 epochs; '30m', '1.5h', '600s' -> by time.
        Raises:
            ValueError: anything else, or a period that is not positive.
        """
        match = _PERIOD.match(str(text))
        if not match or float(match[1]) <= 0:
            raise ValueError(f"expected a positive number of epochs ('2') or a time "
                             f"('30m', '1h', '600s'), got {text!r}")
        unit = match[2] or 'e'
        if unit in _SECONDS:
            return cls(epochs=0, seconds=float(match[1]) * _SECONDS[unit])
        if not float(match[1]).is_integer():
            raise ValueError(f"a period in epochs must be whole, got {text!r}")
        return cls(epochs=int(float(match[1])), seconds=0.0)

    def due_at_epoch_end(self, epoch: int) -> bool:
        """Whether ``last.pt`` is due after ``epoch`` (1-based) by the epoch rule."""
        return self.epochs > 0 and epoch % self.epochs == 0

    def due_by_time(self, last_save: float, now: float) -> bool:
        """Whether ``seconds`` have passed since ``last_save`` (both in seconds)."""
        return self.seconds > 0 and now - last_save >= self.seconds
