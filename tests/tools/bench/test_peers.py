"""The benchmark's peers (tools/bench/peers.py): ffcv's stock pipeline and DALI's CPU
pipeline (when installed)."""
import pytest
import torch

from ffcv_imagenet.data.read.beton import read_labels
from ffcv_imagenet.data.read.decoders import IMAGENET_MEAN, IMAGENET_STD
from ffcv_imagenet.tools.bench import decode_ceiling, peers as peer_pipelines


# a normalised 0-255 pixel lies within these, per channel
LOW = torch.tensor([(0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])

HIGH = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])


def _check_epochs(batches, labels, batch_size, resolution):
    """Two epochs: full batches of normalised float32 (B, 3, R, R) images, every label
    from the file, each epoch's images in a new order."""
    epochs = []
    for _ in range(2):
        seen, firsts = [], []
        for images, batch_labels in batches:
            assert images.dtype == torch.float32
            assert images.shape == (batch_size, 3, resolution, resolution)
            per_channel = images.transpose(0, 1).reshape(3, -1)
            assert (per_channel.min(1).values >= LOW - 1e-4).all()
            assert (per_channel.max(1).values <= HIGH + 1e-4).all()
            assert images.std() > 0.1  # pictures, not a constant
            seen += batch_labels.tolist()
            firsts.append(images[0].clone())
        assert len(seen) == len(labels) // batch_size * batch_size
        assert set(seen) <= set(labels.tolist())
        epochs.append(torch.stack(firsts))
    assert not torch.equal(epochs[0], epochs[1])


def test_ffcv_stock_pipeline_gives_normalised_batches_in_a_new_order(betons):
    loader = peer_pipelines.ffcv_stock_loader(betons[0], batch_size=8, resolution=32,
                                              num_workers=2)
    _check_epochs(loader, read_labels(betons[0]), 8, 32)


def test_dali_cpu_pipeline_gives_normalised_batches_in_a_new_order(betons):
    pytest.importorskip('nvidia.dali', reason=f'needs {peer_pipelines.DALI_PACKAGE}')
    jpegs = decode_ceiling.load_jpegs(betons[0])
    labels = read_labels(betons[0])
    loader = peer_pipelines.dali_cpu_loader(jpegs, labels, batch_size=8, resolution=32,
                                            num_workers=2)
    _check_epochs(loader, labels, 8, 32)


def test_dali_batches_start_the_next_epoch_only_when_it_is_asked_for():
    class Iterator:  # DALI's iterator: an epoch of batches, then reset() to rewind
        def __init__(self):
            self.calls = []

        def __iter__(self):
            self.calls.append('epoch')
            return iter([[{'images': torch.zeros(2, 3, 4, 4),
                           'labels': torch.tensor([[1], [2]])}]])

        def reset(self):
            self.calls.append('reset')
    iterator = Iterator()
    batches = peer_pipelines.DaliBatches(iterator)
    assert [labels.tolist() for _, labels in batches] == [[1, 2]]
    # DALI decodes ahead on reset: nothing may run between epochs, while the benchmark
    # times another pipeline
    assert iterator.calls == ['epoch']
    assert [labels.tolist() for _, labels in batches] == [[1, 2]]
    assert iterator.calls == ['epoch', 'reset', 'epoch']
