"""bench memory (tools/bench/memory.py): page-cache counts, process memory, the loaders'
buffer sizes, and the measurement itself under torchrun at toy size."""
import mmap
import os
import shutil

import numpy as np
import pytest
from ffcv.pipeline.graph import Graph

from ffcv_imagenet.data.read.loaders import train_loader
from ffcv_imagenet.tools.bench import command, memory

MIB = 1 << 20


def test_the_page_cache_count_follows_reads_and_eviction(tmp_path):
    path = tmp_path / 'data.bin'
    path.write_bytes(np.random.default_rng(0).bytes(8 * MIB))
    path.read_bytes()
    read, _ = memory.cached_bytes(path)
    assert read == 8 * MIB
    left = memory.evict(path)
    if left == 8 * MIB:
        pytest.skip(f"{tmp_path}'s file system keeps its files in memory (tmpfs)")
    assert left < MIB
    with open(path, 'rb') as handle:
        handle.seek(2 * MIB)
        handle.read(MIB)
    # what was read, maybe with the kernel's read-ahead after it, and nothing before it
    assert MIB <= memory.mincore_bytes(path) <= 6 * MIB


@pytest.mark.skipif(shutil.which('fincore') is None, reason='util-linux fincore not installed')
def test_mincore_counts_what_fincore_counts(betons):
    betons[0].read_bytes()
    assert memory.mincore_bytes(betons[0]) == memory.cached_bytes(betons[0])[0] > 0


def test_process_memory_sees_touched_anonymous_memory():
    before = memory.process_memory()
    # a fresh anonymous map, every page written: memory the process did not hold before
    # (an allocator may hand out memory it already touched and freed)
    block = mmap.mmap(-1, 64 * MIB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    block.write(b'\x01' * (64 * MIB))
    after = memory.process_memory()
    assert after['pss_anon'] - before['pss_anon'] >= 60 * MIB
    assert after['pss_anon'] <= after['pss'] <= after['rss'] <= after['peak_rss']
    block.close()


def test_buffer_bytes_are_what_an_epoch_allocates(betons, monkeypatch):
    allocated = []
    allocate = Graph.allocate_memory

    def recorded(self, batch_size, slots):
        buffers = allocate(self, batch_size, slots)
        allocated.append(sum(one.nbytes for kind in buffers.values()
                             for buffer in kind.values() if buffer is not None
                             for one in (buffer if isinstance(buffer, tuple) else (buffer,))))
        return buffers
    monkeypatch.setattr(Graph, 'allocate_memory', recorded)
    loader = train_loader(betons[0], batch_size=8, resolution=32, num_workers=1)
    expected = memory.buffer_bytes(loader)
    assert not allocated  # finding the size allocated nothing
    list(loader)
    assert allocated == [expected['total']]
    assert expected['total'] == expected['per_image'] * 8 * expected['slots']


@pytest.mark.parametrize('argv, message', [
    (['--beton', 'missing.beton'], 'missing.beton'),
    (['--processes', '0'], '--processes'),
])
def test_the_memory_command_refuses_bad_input(betons, capsys, argv, message):
    argv = ['memory', '--beton', str(betons[0])] + argv
    with pytest.raises(SystemExit) as exit_info:
        command.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_one_and_two_processes_hold_the_file_once(betons):
    """The toy file (16 MiB: two of ffcv's 8 MiB pages) read through its memory map by
    one rank and by two, for two batches each (in_memory=0: the read tests)."""
    result = memory.bench_memory(betons[0], processes=(1, 2), in_memory=(1,),
                                 batch_size=8, resolution=32, batches=2)
    size = os.path.getsize(betons[0])
    assert result['file_bytes'] == size
    table = memory.format_memory_table(result).splitlines()
    header = next(line for line in table if line.startswith('| processes'))
    rows = table[table.index(header) + 2:table.index(header) + 4]
    assert [row.split(' | ')[:3] for row in rows] == [['| 1', '1', '2'], ['| 2', '1', '2']]
    assert all(row.count('|') == header.count('|') for row in rows)
    by = {(row['processes'], row['in_memory']): row for row in result['rows']}
    for row in result['rows']:
        assert len(row['ranks']) == row['processes']
        for rank in row['ranks']:
            assert rank['pss_anon'] <= rank['pss'] <= rank['rss'] <= rank['peak_rss']
            assert rank['batches'] == 2
            assert rank['read_buffers'] == 0  # a memory map reads into no buffer
        assert 0 < row['page_cache'] <= size
        assert row['held'] == row['pss_anon_sum'] + row['page_cache']
    one, two = by[1, 1], by[2, 1]
    # pages shared by the two ranks (libraries; the mapped file) count once in PSS
    assert two['pss_sum'] < sum(rank['rss'] for rank in two['ranks'])
    # the second rank adds its own memory, not another copy of the file
    assert two['added_per_rank'] < one['pss_anon_sum'] + size / 2
