"""Memory per process: what each rank of a torchrun job holds while the train loader runs.

    python -m ffcv_imagenet bench memory --beton data/betons/train.beton \
        --processes 1 2 4 --in-memory 1 0 --batch-size 64 --resolution 160 --json mem.json

For each process count and ``in_memory`` setting, the ``.beton`` is first evicted from
the page cache (``os.sync``, then ``POSIX_FADV_DONTNEED``; the table says how much was
left), then ``python -m torch.distributed.run --standalone --nproc_per_node=N`` starts
N CPU processes (gloo), each iterating its shard of
:func:`~ffcv_imagenet.data.read.loaders.train_loader` (``distributed=True``, as in
training) for ``--batches`` batches (0: ``--epochs`` whole epochs). After the last
batch, with every rank still alive and its loader open, each rank reads its resident
set (RSS) and proportional set size (PSS: a page shared by k processes counts 1/k in
each) from ``/proc/self/smaps_rollup``, and rank 0 counts the file's pages in the page
cache (``fincore`` from util-linux when installed, else ``mmap`` + ``mincore``).

Why both: RSS counts a page of the memory-mapped file (``in_memory=1``) in every
process that touched it, so summed RSS shows the file once per rank although the node
holds it once. PSS sums to what the processes hold; its anonymous part is their own
memory, and the file's pages held for the run are the page cache's count (mapped or
not). So the node holds ``sum of anonymous PSS + page cache of the file`` for the job.

Peaks: the peak RSS is the kernel's (``VmHWM``); no cheap exact peak of PSS exists, so
none is reported. Each rank also reports the bytes its loader allocated for batch
buffers and for reading (the rows' sizes scale with the batch: see
:func:`buffer_bytes`).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import time
from math import prod
from pathlib import Path

import numpy as np

MIB = 1 << 20
# the package's parent folder: the ranks import this same copy of the package
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[3])


def cached_bytes(path: str | os.PathLike) -> tuple[int, str]:
    """Bytes of ``path`` in the page cache now (at most its size: both count whole
    pages), and what counted them ('fincore' or 'mincore')."""
    tool = shutil.which('fincore')
    if tool:
        out = subprocess.run([tool, '--bytes', '--noheadings', '--output', 'RES', str(path)],
                             capture_output=True, text=True, check=True).stdout
        return min(int(out.split()[0]), os.path.getsize(path)), 'fincore'
    return mincore_bytes(path), 'mincore'


def mincore_bytes(path: str | os.PathLike) -> int:
    """Bytes of ``path`` in the page cache, from ``mincore`` over a read-only map of it
    (mapping it faults nothing in)."""
    size = os.path.getsize(path)
    if size == 0:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    page = os.sysconf('SC_PAGE_SIZE')
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"cannot map {path}")
        try:
            flags = np.zeros(-(-size // page), dtype=np.uint8)
            if libc.mincore(address, size, flags.ctypes.data) != 0:
                raise OSError(ctypes.get_errno(), f"mincore failed on {path}")
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)
    return min(int(np.count_nonzero(flags & 1)) * page, size)


def evict(path: str | os.PathLike) -> int:
    """Drops ``path``'s pages from the page cache (those no process maps); returns the
    bytes still cached after."""
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return cached_bytes(path)[0]


def process_memory() -> dict[str, int | None]:
    """This process's memory now, in bytes: ``rss``, ``pss``, ``pss_anon`` (None on a
    kernel before 5.9, which does not split PSS), and ``peak_rss`` (VmHWM, or ``rss``
    if larger: the counters behind VmHWM are updated in batches)."""
    fields = {}
    with open('/proc/self/smaps_rollup') as rollup:
        for line in rollup:
            key, _, rest = line.partition(':')
            parts = rest.split()
            if len(parts) == 2 and parts[1] == 'kB':
                fields[key] = int(parts[0]) * 1024
    with open('/proc/self/status') as status:
        peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith('VmHWM:'))
    return {'rss': fields['Rss'], 'pss': fields['Pss'], 'pss_anon': fields.get('Pss_Anon'),
            'peak_rss': max(peak, fields['Rss'])}


def buffer_bytes(loader) -> dict[str, int]:
    """What an :class:`~ffcv_imagenet.data.read.loaders.ImageLoader` allocates in host
    memory per epoch for its batches: ``per_image`` (bytes of one image's decoded output
    and working memory), ``slots`` (batches' worth allocated: ``batches_ahead + 2`` on a
    GPU, more on the CPU, which decodes several per launch) and ``total`` =
    per_image x batch size x slots. Queries for GPU memory are left out. Nothing is
    allocated to find this."""
    import torch
    from ffcv.pipeline.allocation_query import AllocationQuery
    queries, _ = loader.loader.graph.collect_requirements()
    per_image = 0
    for kind in queries.values():
        for query in kind.values():
            for one in (query if isinstance(query, (tuple, list)) else (query,)):
                if not isinstance(one, AllocationQuery) or (
                        one.device is not None and torch.device(one.device).type != 'cpu'):
                    continue
                item = (torch.empty((), dtype=one.dtype).element_size()
                        if isinstance(one.dtype, torch.dtype) else np.dtype(one.dtype).itemsize)
                per_image += prod(int(side) for side in one.shape) * item
    inner = loader.loader
    slots = inner.batches_ahead + 1 + inner.batches_per_launch
    return {'per_image': per_image, 'slots': slots,
            'total': per_image * inner.batch_size * slots}


def _read_buffer_bytes() -> int:
    """Bytes allocated by the live epochs' memory contexts for file pages read into the
    process (ffcv's process cache, ``in_memory=0``); 0 for a memory map. An epoch read
    to its end still holds them while its iterator is referenced."""
    from ffcv.loader.epoch_iterator import EpochIterator
    total = 0
    for epoch in gc.get_objects():
        if isinstance(epoch, EpochIterator):
            memory = getattr(epoch.memory_context, 'memory', None)
            total += memory.nbytes if isinstance(memory, np.ndarray) else 0
    return total


def _rank_main(argv: list[str]) -> None:
    """One rank under torchrun: iterate, then measure with every rank still alive."""
    import torch.distributed as dist

    from ...data.read.loaders import endless_batches, train_loader
    parser = argparse.ArgumentParser()
    for name in ('--beton', '--out'):
        parser.add_argument(name, required=True)
    for name in ('--in-memory', '--batch-size', '--resolution', '--batches', '--epochs',
                 '--workers'):
        parser.add_argument(name, type=int, required=True)
    args = parser.parse_args(argv)
    dist.init_process_group('gloo')
    rank = dist.get_rank()
    loader = train_loader(args.beton, batch_size=args.batch_size, resolution=args.resolution,
                          num_workers=args.workers, in_memory=bool(args.in_memory),
                          distributed=True)
    batches = args.batches or args.epochs * len(loader)
    start = time.perf_counter()
    with endless_batches(loader) as stream:
        for _ in range(batches):
            next(stream)
        seconds = time.perf_counter() - start
        dist.barrier()  # every rank done, none gone: PSS splits the shared pages fairly
        result = {'rank': rank, 'batches': batches, 'seconds': seconds, **process_memory(),
                  'read_buffers': _read_buffer_bytes(), 'buffers': buffer_bytes(loader)}
        if rank == 0:
            result['page_cache'] = cached_bytes(args.beton)[0]
        dist.barrier()
    Path(args.out, f'rank{rank}.json').write_text(json.dumps(result))
    dist.destroy_process_group()


def run_configuration(beton: str | os.PathLike, processes: int, in_memory: bool, *,
                      batch_size: int, resolution: int, batches: int, epochs: int = 1,
                      workers: int = 1, timeout: float = 1800) -> dict:
    """One row: evict ``beton`` from the page cache, run ``processes`` ranks under
    torchrun (``batches`` per rank; 0: ``epochs`` epochs) and gather what each measured.
    Raises RuntimeError with torchrun's last lines if the job fails, or if it runs past
    ``timeout`` seconds."""
    left = evict(beton)
    with tempfile.TemporaryDirectory(prefix='bench_memory_') as out:
        command = [sys.executable, '-m', 'torch.distributed.run', '--standalone',
                   f'--nproc_per_node={processes}', '-m', __name__, '--beton', str(beton),
                   '--out', out, '--in-memory', str(int(in_memory)),
                   '--batch-size', str(batch_size), '--resolution', str(resolution),
                   '--batches', str(batches), '--epochs', str(epochs),
                   '--workers', str(workers)]
        path = os.pathsep.join(filter(None, [_PACKAGE_PARENT, os.environ.get('PYTHONPATH')]))
        env = {**os.environ, 'PYTHONPATH': path, 'OMP_NUM_THREADS': '1'}
        log = Path(out, 'torchrun.log')
        # to a file, not a pipe: a rank that outlived torchrun would hold a pipe open
        with open(log, 'w') as sink:
            job = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
            try:
                job.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                # torchrun ends its ranks (each in a session of its own) on SIGTERM
                job.terminate()
                job.wait()
                raise RuntimeError(f"torchrun with {processes} processes, in_memory="
                                   f"{int(in_memory)} ran past {timeout:.0f} s") from None
        if job.returncode != 0:
            lines = log.read_text().strip().splitlines()
            # the ranks' own tracebacks, prefixed by torchrun, say more than its summary
            tail = '\n'.join([line for line in lines if line.startswith('[rank')][-8:]
                             or lines[-15:])
            raise RuntimeError(f"torchrun with {processes} processes, in_memory="
                               f"{int(in_memory)} failed (exit {job.returncode}):\n{tail}")
        ranks = [json.loads(Path(out, f'rank{rank}.json').read_text())
                 for rank in range(processes)]
    anon = [rank['pss_anon'] for rank in ranks]
    return {'processes': processes, 'in_memory': int(in_memory), 'cache_left': left,
            'ranks': ranks, 'page_cache': ranks[0]['page_cache'],
            'pss_sum': sum(rank['pss'] for rank in ranks),
            'pss_anon_sum': None if None in anon else sum(anon)}


def bench_memory(beton: str | os.PathLike, *, processes=(1, 2, 4), in_memory=(1, 0),
                 batch_size: int = 64, resolution: int = 160, batches: int = 0,
                 epochs: int = 1, workers: int = 1) -> dict:
    """Every configuration of ``processes`` x ``in_memory`` (see :func:`run_configuration`),
    with the file's size and each row's growth over the same setting's smallest
    process count. Sizes in bytes."""
    rows = [run_configuration(beton, count, bool(flag), batch_size=batch_size,
                              resolution=resolution, batches=batches, epochs=epochs,
                              workers=workers)
            for flag in in_memory for count in processes]
    for row in rows:
        base = min((other for other in rows if other['in_memory'] == row['in_memory']),
                   key=lambda other: other['processes'])
        row['held'] = node_held(row)
        extra = row['processes'] - base['processes']
        row['added_per_rank'] = ((row['held'] - node_held(base)) / extra
                                 if extra and row['held'] is not None else None)
    return {'beton': str(beton), 'file_bytes': os.path.getsize(beton),
            'cache_method': cached_bytes(beton)[1], 'batch_size': batch_size,
            'resolution': resolution, 'workers': workers, 'rows': rows}


def node_held(row: dict) -> int | None:
    """Bytes the node holds for a row's job: the ranks' own (anonymous) memory and the
    file's pages in the page cache, each counted once."""
    if row['pss_anon_sum'] is None:
        return None
    return row['pss_anon_sum'] + row['page_cache']


def _mib(value) -> str:
    return '-' if value is None else f'{value / MIB:,.0f}'


def format_memory_table(result: dict) -> str:
    """The result of :func:`bench_memory` as a markdown table (MiB), with the batch
    buffers of each rank's loader below it."""
    head = ('| processes | in_memory | batches per rank | RSS per rank | peak RSS per rank '
            '| PSS per rank | sum of PSS | sum of anonymous PSS | page cache of the file '
            '| node holds (anon. PSS + cache) | added per rank | file |')
    title = (f"Memory in MiB; {result['beton']}, batch {result['batch_size']}, "
             f"{result['resolution']} px, {result['workers']} decoding thread(s) per rank; "
             f"page cache counted with {result['cache_method']}.")
    lines = [title, '', head, '|' + '---|' * (head.count('|') - 1)]
    for row in result['rows']:
        per_rank = [' / '.join(_mib(rank[key]) for rank in row['ranks'])
                    for key in ('rss', 'peak_rss', 'pss')]
        lines.append(f"| {row['processes']} | {row['in_memory']} | "
                     f"{row['ranks'][0]['batches']} | " + ' | '.join(per_rank) +
                     f" | {_mib(row['pss_sum'])} | {_mib(row['pss_anon_sum'])} | "
                     f"{_mib(row['page_cache'])} | {_mib(row['held'])} | "
                     f"{_mib(row['added_per_rank'])} | {_mib(result['file_bytes'])} |")
    left = max(row['cache_left'] for row in result['rows'])
    buffers = result['rows'][0]['ranks'][0]['buffers']
    evicted = (f"Before each row the file was evicted from the page cache: at most "
               f"{_mib(left)} MiB of it stayed. 'added per rank': (node holds - the same "
               f"in_memory's first row) / the ranks added.")
    reads = ', '.join(f"{row['processes']} proc. {_mib(row['ranks'][0]['read_buffers'])}"
                      for row in result['rows'] if not row['in_memory'])
    allocated = (f"Each rank's loader allocates {_mib(buffers['total'])} MiB of batch buffers "
                 f"({buffers['per_image']:,} bytes per image x {result['batch_size']} x "
                 f"{buffers['slots']} slots); reading buffers (in_memory=0): "
                 f"{reads or '-'} MiB.")
    lines += ['', evicted, allocated]
    return '\n'.join(lines)


if __name__ == '__main__':
    _rank_main(sys.argv[1:])
