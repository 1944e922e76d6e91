"""A CPU loader's batch buffers, kept from one epoch to the next (data/read/ffcv_loader.py)."""
import time

import pytest
import torch
from ffcv.pipeline.graph import Graph

from ffcv_imagenet.data.read import ffcv_loader  # noqa: F401 (under test, as each loader's .loader)
from ffcv_imagenet.data.read.loaders import train_loader, val_loader


@pytest.fixture
def allocations(monkeypatch):
    """Counts ffcv's batch-buffer allocations (one per epoch, unless reused)."""
    calls = []
    allocate = Graph.allocate_memory

    def counted(self, batch_size, slots):
        calls.append((batch_size, slots))
        return allocate(self, batch_size, slots)
    monkeypatch.setattr(Graph, 'allocate_memory', counted)
    return calls


def _epoch(loader):
    return torch.cat([images.clone() for images, _ in loader])


def _wait_until_the_thread_waits(epoch, deadline: float) -> None:
    """Until the epoch's thread has filled the queue (it then waits to queue the next
    batch, having decoded it) or has ended."""
    while not epoch.output_queue.full() and epoch.is_alive():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_epochs_reuse_the_buffers_until_their_shapes_change(betons, allocations):
    loader = val_loader(betons[1], batch_size=8, resolution=32, num_workers=2)  # 8, 8, 4
    first = _epoch(loader)
    assert len(allocations) == 1
    assert torch.equal(_epoch(loader), first)
    assert len(allocations) == 1
    loader.resolution = 24  # smaller batches: new buffers
    assert _epoch(loader).shape[-2:] == (24, 24)
    assert len(allocations) == 2
    loader.batch_size = 5  # a new ffcv loader, with buffers of its own
    _epoch(loader)
    assert allocations[-1][0] == 5 and len(allocations) == 3


def test_a_gpu_loader_does_not_reuse_buffers(betons):
    loader = val_loader(betons[1], batch_size=4, resolution=32, num_workers=1,
                        device='cuda:0')  # building one touches no GPU
    assert not loader.loader.reuse_buffers


def test_reused_buffers_give_the_same_augmented_pixels(betons):
    """Epoch 1 after epoch 0, in reused buffers, is epoch 1 of a fresh loader."""
    def make():
        return train_loader(betons[0], batch_size=8, resolution=32, num_workers=2, seed=5)
    loader, fresh = make(), make()
    _epoch(loader)
    fresh.epoch = 1
    assert torch.equal(_epoch(loader), _epoch(fresh))


def test_the_last_batch_survives_until_the_next_epoch_is_asked_for_a_batch(betons):
    """The slot rotation goes on across epochs: the next epoch's thread, decoding
    ahead, does not overwrite the batch the consumer still holds."""
    # 48 images: 3 batches, 5 slots; a new order every epoch
    loader = train_loader(betons[0], batch_size=16, resolution=32, num_workers=1,
                          batches_ahead=3)
    *_, (held, _) = loader  # a view into the buffers, kept past the loop
    kept = held.clone()
    epoch = iter(loader.loader)
    _wait_until_the_thread_waits(epoch, time.monotonic() + 60)  # 3 batches decoded ahead
    assert epoch.output_queue.full()
    assert torch.equal(held, kept)
    assert len(list(epoch)) == 3


def test_an_abandoned_epochs_thread_keeps_its_buffers(betons, allocations):
    """Its thread may still write to them: the next epoch decodes into new ones."""
    loader = val_loader(betons[1], batch_size=4, resolution=32, num_workers=1)
    expected = _epoch(loader)
    abandoned = iter(loader.loader)
    next(abandoned)
    assert abandoned.is_alive()
    assert len(allocations) == 1  # the first epoch's, reused by the abandoned one
    assert torch.equal(_epoch(loader), expected)
    assert len(allocations) == 2
    abandoned.close()


def test_epochs_started_before_the_last_was_read_keep_their_own_buffers(betons):
    """Three epochs decoded ahead, none read yet: each in buffers of its own (a third
    epoch continuing the rotation in shared buffers would write over the first's)."""
    loader = val_loader(betons[1], batch_size=10, resolution=32, num_workers=1)
    expected = _epoch(loader)  # file order: every epoch the same images
    epochs = []
    for _ in range(3):
        epochs.append(iter(loader.loader))
        epochs[-1].join(timeout=60)  # its 2 batches and its end queued: its thread ended
        assert not epochs[-1].is_alive()
    for epoch in epochs:
        images = [next(t for t in batch if t.ndim == 4).clone() for batch in epoch]
        assert torch.equal(torch.cat(images), expected)


def _batches(loader, batches_per_launch):
    loader.loader.batches_per_launch = batches_per_launch
    return [(images.clone(), labels.clone()) for images, labels in loader]


@pytest.mark.parametrize('batches_per_launch', [2, 4])
def test_batches_decoded_together_are_the_batches_decoded_one_by_one(betons,
                                                                      batches_per_launch):
    """Same pixels (random crops and flips seeded by each image's own batch), labels and
    batch sizes, a short last batch too, over epochs whose groups start at other slots."""
    def make():
        # train: 48 images, 4 batches of 11 (the short one dropped); val: 20, 6+6+6+2
        return (train_loader(betons[0], batch_size=11, resolution=32, num_workers=2,
                             seed=7, batches_ahead=2),
                val_loader(betons[1], batch_size=6, resolution=32, num_workers=2,
                           batches_ahead=2))
    grouped, single = make(), make()
    for _ in range(3):
        for loader, one_by_one, sizes in zip(grouped, single, ([11] * 4, [6, 6, 6, 2])):
            got, expected = _batches(loader, batches_per_launch), _batches(one_by_one, 1)
            assert [len(labels) for _, labels in got] == sizes
            for (images, labels), (images_1, labels_1) in zip(got, expected, strict=True):
                assert torch.equal(labels, labels_1) and torch.equal(images, images_1)


def test_a_batch_is_not_written_over_while_its_consumer_holds_it(betons):
    """While a group of batches is decoded, the consumer holds one batch and the queue
    ``batches_ahead`` more: each batch stays as it was until the next is asked for."""
    loader = train_loader(betons[0], batch_size=4, resolution=32, num_workers=2,
                          batches_ahead=1)  # 12 batches, groups of 4 in 6 slots
    loader.loader.batches_per_launch = 4
    epoch = iter(loader.loader)
    deadline = time.monotonic() + 120
    count = 0
    for batch in epoch:
        held = [t.clone() for t in batch]
        _wait_until_the_thread_waits(epoch, deadline)
        time.sleep(0.05)
        assert all(torch.equal(t, h) for t, h in zip(batch, held))
        count += 1
    assert count == 12


def test_a_cpu_loader_groups_batches_where_cuda_is_available(betons, monkeypatch):
    """ffcv makes one CUDA stream per slot of its own (batches_ahead + 2) whenever CUDA
    is available, for any loader, and its consumer waits on the slot's: a group's slots
    outnumber them, and a CPU pipeline has nothing to wait for."""
    import ffcv.loader.epoch_iterator as epoch_iterator

    class Stream:
        def wait_stream(self, other):
            raise AssertionError('a CPU loader waited on a CUDA stream')
    monkeypatch.setattr(epoch_iterator, 'IS_CUDA', True)
    monkeypatch.setattr(torch.cuda, 'Stream', Stream)
    monkeypatch.setattr(torch.cuda, 'current_stream', Stream)
    loader = val_loader(betons[1], batch_size=2, resolution=32, num_workers=1,
                        batches_ahead=1)  # 10 batches in 6 slots, ffcv's streams 3
    epoch = iter(loader.loader)
    assert len([batch for batch in epoch]) == 10 and epoch.grouped


def test_loaders_reading_samples_from_the_file_decode_batches_in_groups(betons):
    """With in_memory off, each batch of a group has its bytes read into a slot of its
    own before the group is decoded (data/read/sample_reads.py)."""
    loader = val_loader(betons[1], batch_size=6, resolution=32, num_workers=2,
                        in_memory=False)
    in_memory = val_loader(betons[1], batch_size=6, resolution=32, num_workers=2)
    epoch = iter(loader.loader)
    got = torch.cat([next(t for t in batch if t.ndim == 4).clone() for batch in epoch])
    assert epoch.grouped
    assert torch.equal(got, _epoch(in_memory))


def test_fewer_batches_per_launch_after_an_epoch_ending_in_a_later_slot(betons):
    """The rotation resumes where the last epoch stopped, within the new slot count."""
    loader = val_loader(betons[1], batch_size=4, resolution=32, num_workers=1,
                        batches_ahead=2)  # 5 batches in 7 slots: the epoch ends at slot 5
    expected = _batches(loader, 4)
    for batches_per_launch in (1, 4):  # 4 slots, then 7 again
        got = _batches(loader, batches_per_launch)
        assert all(torch.equal(a, b) for pair in zip(got, expected, strict=True)
                   for a, b in zip(*pair))


@pytest.mark.parametrize('in_memory', [True, False])  # a memory map, sample reads
def test_loaders_leave_torchs_thread_count_as_the_process_set_it(betons, in_memory):
    """ffcv sets torch's (process-wide) thread count to the decoding threads' when a
    loader is built and at each epoch: a process that chose fewer for the model's
    math (one on a GPU rank) would get the loader's."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loader = val_loader(betons[1], batch_size=4, resolution=32, num_workers=2,
                            in_memory=in_memory)
        assert torch.get_num_threads() == 1
        _epoch(loader)
        assert torch.get_num_threads() == 1
        assert loader.loader.num_workers == 2
    finally:
        torch.set_num_threads(before)
