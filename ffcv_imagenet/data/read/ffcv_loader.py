"""ffcv's ``Loader`` with these changes to its epoch thread and its reads.

* The thread calls ``thread_setup()`` before anything else; the loaders use this to
  make their GPU the thread's current CUDA device.
* Its parallel loops hand out one image at a time (numba's chunk size 1).
* If the thread fails, the consumer gets the error. With ffcv's own thread, the
  consumer waits forever for the next batch.
* With ``reuse_buffers``, batch buffers are kept from one epoch to the next.
* With ``batches_per_launch`` > 1 (CPU pipelines only), one launch of the compiled
  pipeline decodes that many batches.
* ``num_workers`` sets the decoding threads only: torch's thread count stays as the
  process set it (ffcv sets it to ``num_workers`` as well, when a loader is built and
  at every epoch, from the main thread and from the epoch's).
* With ``os_cache=False`` (``in_memory=0``), each batch's samples are read from the
  file by :mod:`.sample_reads` instead of ffcv's process cache, which holds a private
  copy of nearly the whole file in every process when the order is random.

Why reuse the buffers: ffcv allocates ``batches_ahead + 2`` slots of batch memory
every epoch. Each is a whole batch of decoded output plus each image's working
memory. The kernel then has to fault in and zero the new pages while the batches are
decoded. On a 500-image epoch, 160 px float32 output, 2 threads, this made the val
loader 1.36x slower (BENCHMARKS.md, "CPU loader").

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

Why several batches per launch: every launch of the pipeline's parallel loop ends with
one thread idle while the other finishes the last image, and costs the epoch thread
its Python work (ffcv's arguments, numba's dispatch, the queue). At 64 images per
batch on 2 threads that was 3-4% of a val loader's time (BENCHMARKS.md, "CPU loader").
The group's batches lie in consecutive slots, so the pipeline sees one batch of their
images; each is queued on its own, as ffcv would. The consumer may hold one batch and
the queue ``batches_ahead`` more while a group is decoded, so the loader keeps
``batches_ahead + 1 + batches_per_launch`` slots (ffcv's ``batches_ahead + 2`` at 1).
"""
from __future__ import annotations

import itertools
import weakref
from typing import Callable

import numba
import numpy as np
from ffcv.loader import Loader
from ffcv.loader import epoch_iterator
from ffcv.loader.epoch_iterator import EpochIterator
from ffcv.memory_managers.os_cache import OSCacheContext
from ffcv.pipeline.compiler import Compiler
import torch
from queue import Full

from .sample_reads import SampleReadContext, SampleReadManager

# what ImageLoader asks of a CPU loader: 4 batches per launch made the val loader 1.04x
# (float32, 64 images per batch, 2 threads), for 3 more slots of batch memory
CPU_BATCHES_PER_LAUNCH = 4


def check_decoding_threads(threads: int) -> None:
    """Raises ValueError, with a one-line reason, when ``threads`` decoding threads are
    more than numba's pool holds (numba would raise from inside ffcv's Loader)."""
    if threads > numba.config.NUMBA_NUM_THREADS:  # numba's pool: one per CPU
        raise ValueError(f"{threads} decoding threads asked for, but numba starts at most "
                         f"{numba.config.NUMBA_NUM_THREADS} (NUMBA_NUM_THREADS, by default "
                         f"the machine's CPUs)")


def set_decoding_threads(threads: int) -> None:
    """ffcv's ``Compiler.set_num_threads`` without its ``torch.set_num_threads``:
    ``threads`` for the pipelines compiled next and for numba's parallel loops launched
    from the calling thread (numba's count is per thread)."""
    Compiler.num_threads = threads
    numba.set_num_threads(threads)


class _SetUpEpochIterator(EpochIterator):
    """ffcv's epoch thread, which calls ``thread_setup()`` before its first CUDA call,
    starts at batch slot ``first_slot``, hands any error of its own to the consumer,
    and tells its loader when the consumer has read it to its end."""

    def __init__(self, loader: Loader, order: np.ndarray, thread_setup: Callable[[], None],
                 first_slot: int = 0, number: int = 0):
        # set before ffcv's constructor, which starts the thread
        self.thread_setup, self.error, self.first_slot = thread_setup, None, first_slot
        self.number = number  # of the loader's epochs started, this one's
        self.grouped = False  # set by the thread before it queues anything
        # ffcv's run sets torch's thread count (process-wide) to the decoding threads'
        # before its first batch; the first batch sets back the count the process chose
        self.torch_threads: int | None = torch.get_num_threads()
        super().__init__(loader, order)

    def run(self) -> None:
        try:
            self.thread_setup()
            # the decoder's parallel loop, launched from this thread, hands each thread
            # its next image when it is free: crops cost up to ~10x one another, and
            # equal shares left a thread idle at the end of every batch (1.02-1.07x,
            # BENCHMARKS.md, "CPU loader")
            numba.set_parallel_chunksize(1)
            self.current_batch_slot = self.first_slot  # ffcv's constructor set 0
            # ffcv's process cache reads batch b's pages into memory that batch b - 1 was
            # read from, once told that b starts: a group would be told before its first
            # batches are decoded. The sample reads keep a group's batches apart.
            self.grouped = (self.loader.batches_per_launch > 1 and self._buffers_are_arrays()
                            and isinstance(self.memory_context,
                                           (OSCacheContext, SampleReadContext)))
            if self.grouped:
                self._run_groups()
            else:
                super().run()
        except Exception as error:  # re-raised in the consumer, by __next__
            self.error = error
            self._put(None)  # after the batches before it, once the consumer takes them

    def _buffers_are_arrays(self) -> bool:
        """Whether every batch buffer is one array over the slots, as a group needs (a
        torch-typed one, such as ToDevice's, is a list of tensors, one per slot)."""
        def arrays(buffer) -> bool:
            if isinstance(buffer, tuple):
                return all(map(arrays, buffer))
            return buffer is None or isinstance(buffer, np.ndarray)
        return all(arrays(buffer) for kind in self.memory_allocations.values()
                   for buffer in kind.values())

    def _run_groups(self) -> None:
        """ffcv's ``run`` for a CPU pipeline, decoding up to the loader's
        ``batches_per_launch`` batches at a time, in consecutive slots (a group stops at
        the last slot)."""
        slots, most = self.loader._slots(), self.loader.batches_per_launch
        set_decoding_threads(self.loader.num_workers)
        self.torch_threads = None
        first = 0  # the group's first batch, counted in the epoch
        while True:
            slot = self.current_batch_slot
            group = list(itertools.islice(self.iter_ixes, min(most, slots - slot)))
            if not group:
                self._put(None)
                return
            self.current_batch_slot = (slot + len(group)) % slots
            for offset, batch in enumerate(self._decode(first, group, slot)):
                if not self._put((slot + offset, batch)):
                    return
            first += len(group)

    def _decode(self, first: int, group: list[np.ndarray], slot: int) -> list[tuple]:
        """The pipeline's outputs for each batch of ``group`` (sample indices), decoded
        by one launch into slots ``slot``, ``slot + 1``, ..."""
        for batch in range(first, first + len(group)):
            self.memory_context.start_batch(batch)
        indices = np.concatenate(group)

        def slots_as_one_batch(buffer):  # (slots, batch, ...) -> (images, ...)
            if isinstance(buffer, tuple):
                return tuple(map(slots_as_one_batch, buffer))
            if buffer is None:
                return None
            return buffer[slot:slot + len(group)].reshape(-1, *buffer.shape[2:])[:len(indices)]
        args = {'batch_indices': indices, 'storage_state': self.storage_state,
                'metadata': self.metadata}
        for kind, prefix in (('operation', 'memory_'), ('shared', 'shared_memory_')):
            args.update((prefix + str(node), slots_as_one_batch(buffer))
                        for node, buffer in self.memory_allocations[kind].items())
        code, outputs = self.loader.code
        for stage, defines in code:
            args.update(zip((f'result_{node}' for node in defines), stage(**args)))
        size = self.loader.batch_size
        return [tuple(args[f'result_{node}'][start:start + size] for node in outputs)
                for start in range(0, len(indices), size)]

    def run_pipeline(self, *args, **kwargs):
        # called by ffcv's run for each batch, in this thread
        if self.torch_threads is not None:
            torch.set_num_threads(self.torch_threads)
            self.torch_threads = None
        return super().run_pipeline(*args, **kwargs)

    def _put(self, item) -> bool:
        """Queues ``item`` when there is room; False if the epoch was closed first."""
        while not self.terminate_event.is_set():
            try:
                self.output_queue.put(item, timeout=0.5)
                return True
            except Full:
                pass
        return False

    def __next__(self):
        # ffcv's __next__, whose wait on the slot's CUDA stream (ffcv makes one per slot
        # of its own whenever CUDA is available) a group skips: its slots outnumber the
        # streams, and a CPU pipeline has nothing to wait for. ``grouped`` is read after
        # the thread queued something, so after the thread set it.
        try:
            item = self.output_queue.get()
            if item is None:
                self.close()
                raise StopIteration()
            slot, result = item
            if epoch_iterator.IS_CUDA and not self.grouped:
                self.current_stream.wait_stream(self.cuda_streams[slot])
            return result
        except StopIteration:
            if self.error is not None:
                raise RuntimeError("the loader's decoding thread failed") from self.error
            self.loader.epoch_read(self)
            raise


class SetUpLoader(Loader):
    """ffcv's ``Loader`` whose epoch threads first call ``thread_setup()`` (settable;
    ``ImageLoader`` makes it select the loader's device), skipping the first
    ``start_batch`` batches of the epoch; with ``reuse_buffers``, decoding into the
    previous epoch's batch buffers when their shapes still fit, and with
    ``batches_per_launch`` > 1 (for a pipeline that stays on the CPU), that many
    batches per launch of the pipeline (see the module's docstring)."""

    def __init__(self, *args, thread_setup: Callable[[], None] = lambda: None,
                 reuse_buffers: bool = False, batches_per_launch: int = 1, **kwargs):
        torch_threads = torch.get_num_threads()
        super().__init__(*args, **kwargs)
        torch.set_num_threads(torch_threads)  # ffcv's constructor set the decoding threads'
        self.thread_setup = thread_setup
        self.start_batch = 0
        self.reuse_buffers = reuse_buffers
        if batches_per_launch < 1:
            raise ValueError(f"batches_per_launch must be positive, got {batches_per_launch}")
        self.batches_per_launch = batches_per_launch
        if not self._args['os_cache']:
            self._read_samples()
        # weak references: the reuse adds no reference cycle of its own to ffcv's
        self._latest: weakref.ref | None = None  # the epoch started last
        self._started = 0  # epochs started
        self._read = (0, 0)  # the last epoch read to its end: its number, its next slot
        self._kept: tuple[tuple, dict] | None = None  # (what they fit, the buffers)
        # ffcv's epoch asks for batches_ahead + 2 slots: a group needs more
        allocate, loader = self.graph.allocate_memory, weakref.ref(self)
        self.graph.allocate_memory = lambda batch, _: loader()._buffers(allocate, batch)

    def _read_samples(self) -> None:
        """ffcv's process cache replaced by reads of each batch's samples (see
        :mod:`.sample_reads`), for the pipelines generated from now on."""
        self.memory_manager = SampleReadManager(self.reader, self.batches_per_launch)
        self.graph.memory_read = self.memory_manager.compile_reader()
        self.generate_code()

    def epoch_read(self, epoch: _SetUpEpochIterator) -> None:
        """Called by ``epoch`` when the consumer has read it to its end."""
        self._read = (epoch.number, epoch.current_batch_slot)

    def _slots(self) -> int:
        """Batch slots per epoch: ffcv's batches_ahead + 2, and one more for each batch
        decoded in a launch after the first."""
        return self.batches_ahead + 1 + self.batches_per_launch

    def _buffers(self, allocate: Callable, batch_size: int) -> dict:
        """ffcv's ``allocate_memory(batch_size, self._slots())``, or the kept buffers
        (if ``__iter__`` kept them for the epoch being started) when the pipeline asks
        for the same shapes."""
        slots = self._slots()
        if not self.reuse_buffers:
            return allocate(batch_size, slots)
        queries, _ = self.graph.collect_requirements()
        fits = (batch_size, slots, repr(queries))
        if self._kept is None or self._kept[0] != fits:
            self._kept = (fits, allocate(batch_size, slots))
        return self._kept[1]

    def __iter__(self) -> _SetUpEpochIterator:
        # ffcv's Loader.__iter__, starting our thread class instead of its own
        set_decoding_threads(self.num_workers)
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
        # the rotation goes on in the same buffers; a changed slot count comes with new
        # buffers, where any start is safe
        first_slot = self._read[1] % self._slots() if reuse else 0
        self._started += 1
        epoch = _SetUpEpochIterator(self, selected_order, self.thread_setup, first_slot,
                                    self._started)
        self._latest = weakref.ref(epoch)
        return epoch
