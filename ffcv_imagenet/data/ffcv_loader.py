"""ffcv's ``Loader`` with four changes to its epoch thread.

* The thread calls ``thread_setup()`` before anything else; the loaders use this to
  make their GPU the thread's current CUDA device.
* Its parallel loops hand out one image at a time (numba's chunk size 1).
* If the thread fails, the consumer gets the error. With ffcv's own thread, the
  consumer waits forever for the next batch.
* With ``reuse_buffers``, batch buffers are kept from one epoch to the next.

Why reuse the buffers: ffcv allocates ``batches_ahead + 2`` slots of batch memory
every epoch. Each is a whole batch of decoded output plus each image's working
memory. The kernel then has to fault in and zero the new pages while the batches are
decoded. On a 500-image epoch, 160 px float32 output, 2 threads, this made the val
loader 1.36x slower (BENCHMARKS.md, issue 14.2).

Reusing buffers is safe only if nothing still reads or writes the old slots:
* They are reused only after the consumer has read the previous epoch to its end and
  that epoch's thread has ended. An abandoned epoch, or one still being read (two
  iterators at once), keeps its buffers, and the next epoch gets new ones.
* The slot rotation continues across epochs. A batch of the last epoch is therefore
  overwritten no sooner than it would have been mid-epoch.
* A GPU loader does not reuse buffers. ffcv orders a slot's reuse after the device has
  finished with it by recording CUDA events, and those events belong to one epoch's
  thread.

The price: a CPU loader's buffers stay allocated between its epochs.
"""
from __future__ import annotations

import weakref
from typing import Callable

import numba
import numpy as np
from ffcv.loader import Loader
from ffcv.loader.epoch_iterator import EpochIterator
from ffcv.pipeline.compiler import Compiler
from queue import Full


class _SetUpEpochIterator(EpochIterator):
    """ffcv's epoch thread, which calls ``thread_setup()`` before its first CUDA call,
    starts at batch slot ``first_slot``, hands any error of its own to the consumer,
    and tells its loader when the consumer has read it to its end."""

    def __init__(self, loader: Loader, order: np.ndarray, thread_setup: Callable[[], None],
                 first_slot: int = 0, number: int = 0):
        # set before ffcv's constructor, which starts the thread
        self.thread_setup, self.error, self.first_slot = thread_setup, None, first_slot
        self.number = number  # of the loader's epochs started, this one's
        super().__init__(loader, order)

    def run(self) -> None:
        try:
            self.thread_setup()
            # the decoder's parallel loop, launched from this thread, hands each thread
            # its next image when it is free: crops cost up to ~10x one another, and
            # equal shares left a thread idle at the end of every batch (1.02-1.07x,
            # BENCHMARKS.md, issue 14.2)
            numba.set_parallel_chunksize(1)
            self.current_batch_slot = self.first_slot  # ffcv's constructor set 0
            super().run()
        except Exception as error:  # re-raised in the consumer, by __next__
            self.error = error
            while not self.terminate_event.is_set():
                try:
                    self.output_queue.put(None, timeout=0.5)
                    return
                except Full:  # the consumer has not taken the batches before it yet
                    pass

    def __next__(self):
        try:
            return super().__next__()
        except StopIteration:
            if self.error is not None:
                raise RuntimeError("the loader's decoding thread failed") from self.error
            self.loader.epoch_read(self)
            raise


class SetUpLoader(Loader):
    """ffcv's ``Loader`` whose epoch threads first call ``thread_setup()`` (settable;
    ``ImageLoader`` makes it select the loader's device), skipping the first
    ``start_batch`` batches of the epoch, and with ``reuse_buffers``, decoding into
    the previous epoch's batch buffers when their shapes still fit (see the module's
    docstring)."""

    def __init__(self, *args, thread_setup: Callable[[], None] = lambda: None,
                 reuse_buffers: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.thread_setup = thread_setup
        self.start_batch = 0
        self.reuse_buffers = reuse_buffers
        # weak references: the reuse adds no reference cycle of its own to ffcv's
        self._latest: weakref.ref | None = None  # the epoch started last
        self._started = 0  # epochs started
        self._read = (0, 0)  # the last epoch read to its end: its number, its next slot
        self._kept: tuple[tuple, dict] | None = None  # (what they fit, the buffers)
        if reuse_buffers:
            allocate, loader = self.graph.allocate_memory, weakref.ref(self)
            self.graph.allocate_memory = lambda batch, slots: loader()._buffers(
                allocate, batch, slots)

    def epoch_read(self, epoch: _SetUpEpochIterator) -> None:
        """Called by ``epoch`` when the consumer has read it to its end."""
        self._read = (epoch.number, epoch.current_batch_slot)

    def _buffers(self, allocate: Callable, batch_size: int, slots: int) -> dict:
        """ffcv's ``allocate_memory(batch_size, slots)``, or the kept buffers (if
        ``__iter__`` kept them for the epoch being started) when the pipeline asks for
        the same shapes."""
        queries, _ = self.graph.collect_requirements()
        fits = (batch_size, slots, repr(queries))
        if self._kept is None or self._kept[0] != fits:
            self._kept = (fits, allocate(batch_size, slots))
        return self._kept[1]

    def __iter__(self) -> _SetUpEpochIterator:
        # ffcv's Loader.__iter__, starting our thread class instead of its own
        Compiler.set_num_threads(self.num_workers)
        order = self.next_traversal_order()
        # a run resumed inside an epoch skips the batches it already trained on
        selected_order = order[self.start_batch * self.batch_size:len(self) * self.batch_size]
        self.next_epoch += 1
        if self.code is None or self.recompile:
            self.generate_code()
        latest = self._latest() if self._latest is not None else None
        # reused only if the epoch started last was read to its end; else the last
        # buffers stay with that epoch, and this one gets new ones
        reuse = self.reuse_buffers and 0 < self._started == self._read[0]
        if reuse and latest is not None:
            latest.join()  # it ends right after queuing the end the consumer has read
        if not reuse:
            self._kept = None
        first_slot = self._read[1] if reuse else 0
        self._started += 1
        epoch = _SetUpEpochIterator(self, selected_order, self.thread_setup, first_slot,
                                    self._started)
        self._latest = weakref.ref(epoch)
        return epoch
