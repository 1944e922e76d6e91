"""``in_memory=0``: each batch's samples read from the file, a few batches held at a time.

ffcv's own reader for ``os_cache=False`` (its process cache) reads whole pages of the
``.beton`` (8 MiB by default) into memory private to the process, and keeps a page
until the last batch of the epoch that uses it. In a random order nearly every page
holds a sample of a late batch, so within a few batches a process reads the whole
file and then holds all of it: a private copy per process, plus the same pages in the
OS page cache. Measured on a 2.1 GiB file, 64 images per batch: after 20 batches one
process held 2.6 GiB of its own (BENCHMARKS.md, "Memory per process"). A node with
N ranks then needs N file sizes of RAM, the opposite of what ``in_memory=0`` is for.

:class:`SampleReadManager` reads instead, for each batch, only the byte ranges of its
samples (``os.preadv``, no read-ahead) into one of a few batch-sized slots, on a pool
of threads that reads up to ``prefetch`` batches ahead of the one being decoded. A
process holds ``(batches_per_launch + prefetch)`` slots, each as large as the epoch's
largest batch of stored bytes. What was read also passes through the page cache, which
the kernel frees when it needs the memory.

Each sample must appear at most once per epoch (where a slot's bytes are found is
kept per sample, for the decoder's ``memory_read(address)``), as in this project's
orders; an order that repeats one is refused.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from ffcv.memory_managers.base import MemoryContext, MemoryManager
from ffcv.pipeline.compiler import Compiler

# batches read ahead of the one being decoded (ffcv's process cache: 3)
PREFETCH = 2
# reading threads: each batch is read in as many parts, so that a disk sees several
# requests at once
READ_THREADS = 4


class SampleReadManager(MemoryManager):
    """ffcv memory manager that reads only the samples of each batch (module docstring).
    ``batches_per_launch``: batches the pipeline decodes together, all of whose bytes
    must be held at once."""

    def __init__(self, reader, batches_per_launch: int = 1, prefetch: int = PREFETCH):
        # not ffcv's MemoryManager.__init__: its page tables are of no use here
        self.reader, self.prefetch = reader, prefetch
        self.batches_per_launch = batches_per_launch
        table = reader.alloc_table
        by_pointer = np.argsort(table['ptr'], kind='stable')
        self.ptrs = np.ascontiguousarray(table['ptr'][by_pointer])
        self.sizes = np.ascontiguousarray(table['size'][by_pointer])
        owners = table['sample_id'][by_pointer].astype(np.int64)
        # a sample's regions: region_of[first[s]:first[s + 1]], indices into ptrs
        self.region_of = np.argsort(owners, kind='stable')
        self.first = np.searchsorted(owners[self.region_of],
                                     np.arange(reader.num_samples + 1))
        self.sample_bytes = np.bincount(owners, weights=self.sizes,
                                        minlength=reader.num_samples).astype(np.int64)

    def regions(self, batch: np.ndarray) -> np.ndarray:
        """Indices into ``ptrs`` of the regions of ``batch``'s samples, in file order."""
        batch = np.asarray(batch, dtype=np.int64)
        starts, counts = self.first[batch], self.first[batch + 1] - self.first[batch]
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return np.sort(self.region_of[np.repeat(starts, counts) + offsets])

    def schedule_epoch(self, batches: Sequence[np.ndarray]) -> SampleReadContext:
        return SampleReadContext(self, batches)

    @property
    def state_type(self):  # ffcv's interface; the reader below is typed at its first call
        return None

    def compile_reader(self):
        def read(address, state):
            index = np.searchsorted(state[1], address)
            start = state[3][index]
            return state[0][start:start + state[2][index]]
        return Compiler.compile(read)


class SampleReadContext(MemoryContext):
    """One epoch of :class:`SampleReadManager`: ``start_batch(b)`` queues the reads of
    batches up to ``b + prefetch`` and returns once batch ``b``'s bytes are in memory."""

    def __init__(self, manager: SampleReadManager, batches: Sequence[np.ndarray]):
        self.manager, self.batches = manager, list(batches)
        self.slots = manager.batches_per_launch + manager.prefetch
        self.memory = np.empty(0, dtype=np.uint8)
        self.locations = np.zeros(len(manager.ptrs), dtype=np.int64)
        self.pending: dict[int, list[Future]] = {}
        self.queued = 0  # batches whose reads were queued
        self.fd, self.pool = None, None

    @property
    def state(self):
        return (self.memory, self.manager.ptrs, self.manager.sizes, self.locations)

    def __enter__(self):
        samples = np.concatenate(self.batches) if self.batches else np.zeros(0, np.int64)
        if len(np.unique(samples)) != len(samples):
            raise ValueError("in_memory=0 reads each sample once per epoch; this epoch's "
                             "order repeats a sample")
        sizes = self.manager.sample_bytes
        # a slot holds the largest batch (buffers untouched until read into)
        self.capacity = max((int(sizes[np.asarray(b, np.int64)].sum())
                             for b in self.batches), default=0)
        self.memory = np.empty(self.slots * self.capacity, dtype=np.uint8)
        self.fd = os.open(self.manager.reader.file_name, os.O_RDONLY)
        # reads are scattered: read-ahead would only fill the page cache
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)
        self.pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix='sample-reads')
        return super().__enter__()

    def start_batch(self, batch: int):
        """Called by the epoch's thread before it decodes ``batch``: every batch before
        ``batch`` that shares its slot is decoded by then (the slots outnumber the
        batches a launch decodes together by ``prefetch``)."""
        while self.queued <= min(batch + self.manager.prefetch, len(self.batches) - 1):
            self.pending[self.queued] = self._queue(self.queued)
            self.queued += 1
        for part in self.pending.pop(batch, ()):
            part.result()  # a failed read raises here, in the epoch's thread
        return super().start_batch(batch)

    def _queue(self, batch: int) -> list[Future]:
        regions = self.manager.regions(self.batches[batch])
        sizes = self.manager.sizes[regions].astype(np.int64)
        places = (batch % self.slots) * self.capacity + np.cumsum(sizes) - sizes
        self.locations[regions] = places
        parts = np.array_split(np.arange(len(regions)), READ_THREADS)
        return [self.pool.submit(self._read, self.manager.ptrs[regions[part]].tolist(),
                                 sizes[part].tolist(), places[part].tolist())
                for part in parts if len(part)]

    def _read(self, pointers: list[int], sizes: list[int], places: list[int]) -> None:
        view = memoryview(self.memory)
        for pointer, size, place in zip(pointers, sizes, places):
            done = 0
            while done < size:
                count = os.preadv(self.fd, [view[place + done:place + size]], pointer + done)
                if count <= 0:
                    raise OSError(f"{self.manager.reader.file_name}: ends at byte "
                                  f"{pointer + done}, inside a sample")
                done += count

    def __exit__(self, *_):
        # called when the epoch closes, maybe while its thread waits in start_batch:
        # that wait then ends with the cancelled read's error instead of never
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            os.close(self.fd)
            self.pool = None
