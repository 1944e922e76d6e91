"""Running a sweep's variants as child processes: one after another, or side by side
(one per GPU), with a stop of the sweep passed on to them.

A child runs in a session of its own, so a Ctrl-C in the terminal reaches only the
sweep, which sends each child a single SIGTERM (the train command saves ``last.pt``
and exits 75); on Linux a child also gets SIGTERM when the sweep dies, even of
SIGKILL, so no variant goes on training in a folder that a rerun will use.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..cli.config import ConfigError
from ..training.preempt import PREEMPTED_EXIT

POLL_S = 0.2  # seconds between looks at the running children

try:  # looked up before any fork: between fork and exec the child may only call it
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: children outlive a killed sweep
    _PRCTL = None
_PR_SET_PDEATHSIG = 1


def visible_gpus() -> list[str]:
    """This process's GPUs as ``CUDA_VISIBLE_DEVICES`` entries: that variable's, when
    set (a sweep inside a job's allocation stays inside it), else ``0..count-1``."""
    listed = os.environ.get('CUDA_VISIBLE_DEVICES')
    if listed is not None:
        return [entry.strip() for entry in listed.split(',') if entry.strip()]
    import torch  # only here: a CPU sweep need not wait for CUDA to initialise
    return [str(index) for index in range(torch.cuda.device_count())]


def gpu_slots(spec: str | None, parallel: int, visible: list[str]) -> list[str | None]:
    """The places where variants run at the same time, one entry each: a GPU (the
    ``CUDA_VISIBLE_DEVICES`` its child gets) when ``spec`` is 'auto' (every one of
    ``visible``), 'N' (the first N) or 'I,J,...' (positions in ``visible``); without
    ``spec``, ``parallel`` times None (the child inherits the environment).
    Raises:
        ConfigError: no GPU, more GPUs than visible, a bad position or ``parallel``.
    """
    if spec is None:
        if parallel < 1:
            raise ConfigError(f"--parallel must be at least 1, got {parallel}")
        return [None] * parallel
    if spec == 'auto':
        chosen = visible
    elif spec.isdigit():
        if not 0 < int(spec) <= len(visible):
            raise ConfigError(f"--gpus {spec}: a count of GPUs, 1 to {len(visible)} (the "
                              f"visible ones); one GPU by its position is '{spec},'")
        chosen = visible[:int(spec)]
    else:
        parts = [part.strip() for part in spec.split(',') if part.strip()]
        valid = all(part.isdigit() and int(part) < len(visible) for part in parts)
        if not parts or not valid or len(set(parts)) < len(parts):
            raise ConfigError(f"--gpus {spec}: expected auto, a count or distinct GPU "
                              f"positions below {len(visible)} (the visible GPUs)")
        chosen = [visible[int(part)] for part in parts]
    if not chosen:
        raise ConfigError(f"--gpus {spec}: no GPU visible")
    return list(chosen)


def _die_with_parent() -> None:
    if _PRCTL is not None:  # see the module docstring
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def launch(command: list[str], output: Path, slot: str | None) -> subprocess.Popen:
    """Starts ``command`` in a session of its own with its output appended to
    ``output``, on GPU ``slot`` when one is given (else with this environment)."""
    env = dict(os.environ)
    if slot is not None:
        env['CUDA_VISIBLE_DEVICES'] = slot
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, 'ab') as handle:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=handle,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=_die_with_parent)


@dataclass
class Job:
    """One child process: ``name`` for messages, its ``command``, and the file its
    output is appended to."""
    name: str
    command: list[str]
    output: Path


class Runner:
    """Runs jobs in order, at most one per slot (see :func:`gpu_slots`) at a time.

    ``on_start(job, slot)`` and ``on_end(job, exit code, stopping)`` are called in
    this process as children start and end (a child ended by signal N has exit code
    -N). SIGTERM or SIGINT to this process during :meth:`run`, or a child that exits
    75 (preempted), stops the sweep: no job starts any more, the running children get
    SIGTERM (a second signal sends SIGINT: stop at once, without saving), and
    :meth:`run` returns once they have all ended.
    """

    def __init__(self, slots: list[str | None], on_start: Callable, on_end: Callable,
                 poll_s: float = POLL_S):
        self.slots, self.poll_s = list(slots), poll_s
        self.on_start, self.on_end = on_start, on_end
        self.running: dict[int, tuple[Job, subprocess.Popen]] = {}  # slot index ->
        self.stopped_by: str | None = None

    def stop(self, reason: str) -> None:
        """Starts no more jobs and asks the running ones to save and stop (SIGTERM), or,
        when already stopping, to stop now (SIGINT)."""
        forward = signal.SIGINT if self.stopped_by else signal.SIGTERM
        self.stopped_by = self.stopped_by or reason
        for _, child in self.running.values():
            child.send_signal(forward)

    def _on_signal(self, signum, frame) -> None:
        self.stop(signal.Signals(signum).name)

    def run(self, jobs: list[Job]) -> str | None:
        """Runs ``jobs``; returns None when all of them ran, else what stopped the sweep
        ('SIGTERM', 'SIGINT' or 'preempted')."""
        pending = list(jobs)
        previous = {signum: signal.signal(signum, self._on_signal)
                    for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            while self.running or (pending and not self.stopped_by):
                self._start(pending)
                time.sleep(self.poll_s)
                self._reap()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return self.stopped_by

    def _start(self, pending: list[Job]) -> None:
        for index, slot in enumerate(self.slots):
            if index in self.running or not pending or self.stopped_by:
                continue
            job = pending.pop(0)
            child = launch(job.command, job.output, slot)
            self.running[index] = (job, child)
            if self.stopped_by:  # the stop came while it was starting
                child.send_signal(signal.SIGTERM)
            self.on_start(job, slot)

    def _reap(self) -> None:
        for index, (job, child) in list(self.running.items()):
            code = child.poll()
            if code is None:
                continue
            del self.running[index]
            self.on_end(job, code, self.stopped_by is not None)
            if code == PREEMPTED_EXIT and not self.stopped_by:
                self.stop('preempted')
