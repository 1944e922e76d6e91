"""Running a function on untrusted files in disposable child processes.

An image library, given a hostile or merely odd file, can raise anything, loop for
ever, allocate without bound, crash its process, or print to file descriptor 2 from C
code (libtiff does, hundreds of lines). Here the calls run in forked children whose
address space is capped (RLIMIT_AS) and whose fd 2 goes to a private file; the parent
kills a child that overruns the time limit on one item and replaces one that dies,
and each item gets an :class:`Outcome`: its value, or a one-line reason. Replacing a
child costs one fork, so a bad file costs milliseconds beyond its own limit.

Items travel in batches (one message each way per batch), and a child reports through
shared memory which item it is on and since when, so that the time limit is per item
without a message per item; array results can come back through a shared mapping.
Both keep the isolation nearly free: an image's trip through a pipe and pickle cost
as much as a third of its decode.

Linux semantics (fork, /proc, prctl); elsewhere the memory cap is not applied. The
cap counts the address space a child adds to what its fork inherited: forked from a
process that has allocated and freed gigabytes (a long test session), a decoder can
reuse inherited free heap uncounted. The converter's own process stays small.
"""
from __future__ import annotations

import ctypes
import faulthandler
import fcntl
import math
import mmap
import multiprocessing
import os
import resource
import signal
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..messages import one_line

_STDERR_LINE_CHARS = 200
_START_GRACE_SECONDS = 5.0
_LOOK_AGAIN_SECONDS = 0.25


@dataclass(frozen=True)
class Limits:
    """What one call may take: ``seconds`` of wall time, and ``memory_mb`` MiB of
    address space beyond what its child process had when it started (0: no limit)."""
    seconds: float = 60.0
    memory_mb: int = 4096


@dataclass
class Outcome:
    """What one call gave: ``value`` (what the function returned), or ``error`` (why it
    did not return: an exception, the time limit, a dead process), and ``stderr`` (the
    first line the call wrote to file descriptor 2, '' if none)."""
    value: Any = None
    error: str | None = None
    stderr: str = ''


def _first_line(fd: int) -> str:
    """The first non-blank line of the file open as ``fd``, flattened and cut."""
    data = os.pread(fd, 4096, 0).decode('utf-8', 'replace')
    for line in data.splitlines():
        if line.strip():
            return one_line(line, _STDERR_LINE_CHARS)
    return ''


def _address_space() -> int:
    """Bytes of virtual memory this process maps now (0 where /proc is missing)."""
    try:
        with open('/proc/self/statm') as statm:
            return int(statm.read().split()[0]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


def _isolate(memory_mb: int, capture_fd: int) -> None:
    """Child-side setup: fd 2 to the capture file, memory cap, no Ctrl-C, and death
    with the parent (else a child stuck in a decoder would outlive the conversion)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C stops
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    os.dup2(capture_fd, 2)
    if faulthandler.is_enabled():  # its crash dump would go to the parent's stderr
        faulthandler.enable(file=2)
    # glibc serves large allocations from free heap space the fork inherited once its
    # mmap threshold has grown (it grows when big blocks are freed): such memory is not
    # new address space and would slip past the cap. A fixed threshold sends every
    # allocation of 128 KiB or more to a fresh mapping, which the cap counts.
    try:
        ctypes.CDLL(None).mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass
    # Relative to what the fork inherited: a parent that imported torch already maps
    # gigabytes that the decoder never touches.
    start = _address_space()
    if start and memory_mb > 0:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = start + memory_mb * 2**20
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        try:
            resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
        except (ValueError, OSError):
            pass  # a system that refuses it keeps running without the cap


@dataclass(frozen=True)
class _InBuffer:
    """Stands for an array that the child left in the shared pixel buffer."""
    offset: int
    shape: tuple
    dtype: str


def _run_one(fn: Callable, item: Any, memory_mb: int) -> tuple[Any, str | None, str]:
    """(value, error, first line written to fd 2) of fn(item), in the child."""
    try:
        value, error = fn(item), None
    except MemoryError:
        value, error = None, f"MemoryError (limit: {memory_mb} MiB per image)"
    except Exception as err:  # noqa: BLE001 - whatever the library raises is the reason
        value, error = None, one_line(f"{type(err).__name__}: {err}")
    sys.stderr.flush()
    stderr = ''
    if os.lseek(2, 0, os.SEEK_END):  # one cheap call for the usual, silent case
        stderr = _first_line(2)
        os.ftruncate(2, 0)  # the file is O_APPEND, so writes restart at 0
    return value, error, stderr


def _stash(value: Any, pixels: mmap.mmap | None, offset: int) -> tuple[Any, int]:
    """``value`` as an _InBuffer if it is an array that fits in ``pixels`` from
    ``offset`` on (pickling images through the pipe cost more than decoding some);
    returns it and the next free offset."""
    if pixels is None or not isinstance(value, np.ndarray):
        return value, offset
    start = -(-offset // 64) * 64
    if start + value.nbytes > len(pixels):
        return value, offset
    np.frombuffer(pixels, value.dtype, value.size, start).reshape(value.shape)[...] = value
    return _InBuffer(start, value.shape, value.dtype.str), start + value.nbytes


def _serve(conn, parent_end, fn: Callable, memory_mb: int, capture_fd: int, progress,
           pixels: mmap.mmap | None) -> None:
    """The child's loop: a batch of (index, item) in, a list of (index, value, error,
    stderr) out. ``progress`` tells the parent, without a message per item, which item
    of the batch runs and since when."""
    parent_end.close()
    _isolate(memory_mb, capture_fd)
    while True:
        try:
            batch = conn.recv()
        except EOFError:
            return
        answers, offset = [], 0
        for position, (index, item) in enumerate(batch):
            progress[1] = time.monotonic()  # before the position: the parent reads it after
            progress[0] = position
            value, error, stderr = _run_one(fn, item, memory_mb)
            value, offset = _stash(value, pixels, offset)
            answers.append((index, value, error, stderr))
        conn.send(answers)


def _capture_file() -> int:
    """An unnamed O_APPEND file for a child's fd 2 (the parent reads it after a crash)."""
    fd, name = tempfile.mkstemp(prefix='ffcv_imagenet-stderr-')
    os.unlink(name)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
    return fd


def _until(deadline: float) -> float:
    """Seconds to wait() for answers: to ``deadline``, but no more than a short while,
    as a deadline moves when the child takes up its next item."""
    return min(_LOOK_AGAIN_SECONDS, max(0.0, deadline - time.monotonic()))


def _exit_reason(code: int) -> str:
    if code < 0:
        return f"worker died (signal {-code})"
    return f"worker died (exit code {code})"


class _Child:
    """One forked worker and the batch of indices it is working on."""

    def __init__(self, fn: Callable, limits: Limits, pixels: mmap.mmap | None):
        self.limits = limits
        self.pixels = pixels
        self.capture = _capture_file()
        context = multiprocessing.get_context('fork')
        self.progress = context.RawArray('d', 2)  # [position in batch, its start time]
        self.conn, child_end = context.Pipe()
        self.process = context.Process(
            target=_serve, daemon=True, name='ffcv_imagenet-decoder',
            args=(child_end, self.conn, fn, limits.memory_mb, self.capture, self.progress,
                  pixels))
        self.process.start()
        child_end.close()
        self.pending: list[int] = []

    @property
    def deadline(self) -> float:
        """When the item the child is on overruns (inf: idle, or no time limit)."""
        if not self.pending or self.limits.seconds <= 0:
            return math.inf
        return self.progress[1] + self.limits.seconds

    def send(self, batch: list[tuple[int, Any]]) -> None:
        self.pending = [index for index, _ in batch]
        # The child restarts this clock as it takes up the item; until then the grace
        # keeps a slow start (a fresh fork on a loaded machine) from counting against it.
        self.progress[1] = time.monotonic() + _START_GRACE_SECONDS
        self.progress[0] = 0
        try:
            self.conn.send(batch)
        except OSError:
            pass  # it died; collect() reports that for the first item

    def _answers(self) -> list[tuple[int, Outcome]]:
        try:
            if not self.pending or not self.conn.poll():
                return []
            answers = self.conn.recv()
        except (EOFError, OSError):
            return []  # a dead child; collect() sees its exit code
        self.pending = []
        return [(index, Outcome(self._unpack(value), error, stderr))
                for index, value, error, stderr in answers]

    def _unpack(self, value: Any) -> Any:
        if not isinstance(value, _InBuffer):
            return value
        # a view, not a copy: copying every image cost more than the rest of the trip
        view = np.frombuffer(self.pixels, value.dtype, math.prod(value.shape), value.offset)
        view.flags.writeable = False
        return view.reshape(value.shape)

    def collect(self) -> tuple[list[tuple[int, Outcome]], list[int], bool]:
        """(answers that arrived, indices to send again, whether the child is gone).
        A child that died or overran gets an error Outcome for the item it was on; the
        other items of its batch are to be sent again (to a new child)."""
        done = self._answers()
        if done or not self.pending:
            return done, [], not self.process.is_alive()
        if self.process.exitcode is None:
            if time.monotonic() < self.deadline:
                return [], [], False
            self.process.kill()
            self.process.join()
            reason = f"took longer than {self.limits.seconds:g} s (worker stopped)"
        else:
            done = self._answers()  # it may have answered just before it died
            if done:
                return done, [], True
            reason = _exit_reason(self.process.exitcode)
        position = min(int(self.progress[0]), len(self.pending) - 1)
        blamed = self.pending.pop(position)
        again, self.pending = self.pending, []
        return [(blamed, Outcome(error=reason, stderr=_first_line(self.capture)))], again, True

    def close(self) -> None:
        if self.process.exitcode is None:
            self.process.kill()
        self.process.join()
        self.conn.close()
        os.close(self.capture)


class _Workers:
    """``count`` children (started when first needed) that run ``fn`` on batches of
    items; one that fails is replaced, and the rest of its batch sent again."""

    def __init__(self, fn: Callable, limits: Limits, count: int, buffer_bytes: int = 0):
        self.fn = fn
        self.limits = limits
        # one shared mapping per child slot, kept across replacements; pages made on use
        self.buffers = [mmap.mmap(-1, buffer_bytes) if buffer_bytes else None
                        for _ in range(count)]
        self.children: list[_Child | None] = [None] * count

    def _send(self, todo: deque, share: int) -> list[_Child]:
        for n, child in enumerate(self.children):
            if todo and not (child and child.pending):
                if child is None:
                    child = self.children[n] = _Child(self.fn, self.limits, self.buffers[n])
                child.send([todo.popleft() for _ in range(min(share, len(todo)))])
        return [child for child in self.children if child and child.pending]

    def run(self, items: Sequence, batch_size: int) -> Iterator[tuple[int, Outcome]]:
        """(index, Outcome) for every item, in the order they finish."""
        todo = deque(enumerate(items))
        while todo or any(child and child.pending for child in self.children):
            # several children: smaller batches near the end, so that they finish together
            share = batch_size if len(self.children) == 1 else \
                max(1, min(batch_size, len(todo) // (2 * len(self.children))))
            busy = self._send(todo, share)
            wait([c.conn for c in busy] + [c.process.sentinel for c in busy],
                 _until(min(child.deadline for child in busy)))
            for n, child in enumerate(self.children):
                if child is None:
                    continue
                done, again, gone = child.collect()
                yield from done
                todo.extendleft((i, items[i]) for i in reversed(again))
                if gone:
                    child.close()
                    self.children[n] = None

    def close(self) -> None:
        for child in self.children:
            if child is not None:
                child.close()
        self.children = [None] * len(self.children)


def run_each(fn: Callable, items: Sequence, limits: Limits, workers: int,
             batch_size: int = 16) -> Iterator[tuple[int, Outcome]]:
    """``(index, Outcome of fn(items[index]))`` for every item, in the order they
    finish, computed by ``workers`` child processes under ``limits`` per item.

    ``fn`` is inherited by fork, not pickled: a closure or a monkeypatched function
    works. Items go ``batch_size`` at a time (fewer near the end, to balance).
    """
    pool = _Workers(fn, limits, max(1, min(workers, len(items))))
    try:
        yield from pool.run(items, batch_size)
    finally:
        pool.close()


class Sandbox:
    """One child process that runs ``fn`` on lists of items, for a caller that works
    one list at a time, e.g. from inside another library's worker process. Each
    process that uses a Sandbox (a forked copy included) starts its own child.

    Array results, up to ``buffer_mb`` MiB per list, come back through shared memory
    as read-only views that stay valid only until the next call: use (or copy) them
    first. A list is one batch, so one message each way per list, not per item.
    """

    def __init__(self, fn: Callable, limits: Limits, buffer_mb: int = 64):
        self.fn = fn
        self.limits = limits
        self.buffer_bytes = int(buffer_mb * 2**20)
        self._workers: _Workers | None = None
        self._owner = 0

    def map(self, items: Sequence) -> list[Outcome]:
        """The Outcome of ``fn(item)`` for each item, in order, within the limits."""
        if self._owner != os.getpid():  # a forked copy: the child and mapping are not ours
            self._workers = _Workers(self.fn, self.limits, 1, self.buffer_bytes)
            self._owner = os.getpid()
        outcomes = dict(self._workers.run(items, batch_size=max(1, len(items))))
        return [outcomes[i] for i in range(len(items))]

    def close(self) -> None:
        if self._workers is not None and self._owner == os.getpid():
            self._workers.close()
        self._workers = None
