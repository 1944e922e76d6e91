"""in_memory=0: each batch's samples read from the file (data/read/sample_reads.py)."""
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ffcv.types import ALLOC_TABLE_TYPE

from ffcv_imagenet.data.read.loaders import endless_batches, train_loader
from ffcv_imagenet.data.read.sample_reads import SampleReadManager


def _epoch(loader):
    return torch.cat([images.clone() for images, _ in loader])


@pytest.mark.slow  # two loaders compiled (test_ffcv_loader.py compares a val epoch)
def test_reading_samples_gives_the_pixels_of_the_memory_map(betons):
    """Two epochs (a new order each) of a train loader reading samples equal those of
    one reading through the page cache: the same images, crops and flips."""
    def make(in_memory):
        return train_loader(betons[0], batch_size=8, resolution=32, num_workers=2,
                            in_memory=in_memory, seed=4)
    reads, mapped = make(False), make(True)
    assert isinstance(reads.loader.memory_manager, SampleReadManager)
    for _ in range(2):
        assert torch.equal(_epoch(reads), _epoch(mapped))


def test_a_process_holds_a_few_batches_of_stored_bytes_not_the_files_pages(betons):
    """ffcv's process cache would hold at least one whole page of the file (8 MiB);
    reading samples holds (batches per launch + prefetch) slots of the largest batch."""
    loader = train_loader(betons[0], batch_size=4, resolution=32, num_workers=1,
                          in_memory=False)
    manager = loader.loader.memory_manager
    epoch = iter(loader.loader)
    context = epoch.memory_context
    largest = max(int(manager.sample_bytes[batch.astype(np.int64)].sum())
                  for batch in context.batches)
    assert context.memory.nbytes == context.slots * largest
    assert context.slots == loader.loader.batches_per_launch + manager.prefetch
    assert context.memory.nbytes < loader.loader.reader.page_size
    assert len(list(epoch)) == len(loader)


def test_closing_an_epoch_midway_ends_its_reading_threads(betons):
    """A closed epoch whose thread may be waiting for a batch's bytes does not hang,
    and leaves no reading thread behind."""
    loader = train_loader(betons[0], batch_size=4, resolution=32, num_workers=1,
                          in_memory=False)
    with endless_batches(loader) as batches:
        next(batches)
    assert not [t for t in threading.enumerate() if t.name.startswith('sample-reads')]


def _manager(rows):
    """A manager over an allocation table of (sample, pointer, size) rows."""
    table = np.array(rows, dtype=ALLOC_TABLE_TYPE)
    reader = SimpleNamespace(alloc_table=table, num_samples=int(table['sample_id'].max()) + 1,
                             file_name='unused')
    return SampleReadManager(reader)


def test_every_region_of_a_batchs_samples_is_read_in_file_order():
    manager = _manager([(0, 900, 10), (1, 100, 20), (2, 500, 30), (1, 700, 40), (3, 300, 5)])
    regions = manager.regions(np.array([1, 3]))
    assert manager.ptrs[regions].tolist() == [100, 300, 700]
    assert manager.sizes[regions].tolist() == [20, 5, 40]
    assert manager.sample_bytes.tolist() == [10, 60, 30, 5]


def test_an_order_repeating_a_sample_is_refused():
    manager = _manager([(0, 100, 10), (1, 200, 10), (2, 300, 10)])
    with pytest.raises(ValueError, match='repeats a sample'):
        manager.schedule_epoch([np.array([0, 1]), np.array([1, 2])]).__enter__()
