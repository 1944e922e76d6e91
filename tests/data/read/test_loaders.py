"""The train and val loaders of a .beton (data/read/loaders.py): normalised pixels,
flips, shapes and resolution changes, ranks, seeds and epochs, batch size changes and
mid-epoch starts, device batches, errors in the decoding thread, no cupy."""
import json
import subprocess
import sys
import threading
import time
from functools import partial

import cv2
import numpy as np
import pytest
import torch
from ffcv.loader.epoch_iterator import EpochIterator
from ffcv.transforms import NormalizeImage, ToDevice
from PIL import Image

from ffcv_imagenet.data.read import loaders
from ffcv_imagenet.data.folders import DatasetError
from ffcv_imagenet.data.read.decoders import IMAGENET_MEAN, IMAGENET_STD, FusedCropDecoder
from ffcv_imagenet.data.read.loaders import ImageLoader, train_loader, val_loader
from ffcv_imagenet.data.read.orders import ShardedOrder
from ffcv_imagenet.data.write.writer import write_beton
from tests.support import ROOT


MEAN = np.array(IMAGENET_MEAN) * 255
STD = np.array(IMAGENET_STD) * 255


def to_pixels(images):
    """Normalised (B, 3, H, W) -> (B, H, W, 3) float pixels 0-255."""
    return images.permute(0, 2, 3, 1).double().numpy() * STD + MEAN


@pytest.fixture(scope='module')
def square_beton(tmp_path_factory):
    """12 smooth 48 x 48 images stored raw (no JPEG loss), label = index."""
    folder = tmp_path_factory.mktemp('square')
    rng = np.random.default_rng(0)
    images, samples = [], []
    for i in range(12):
        small = rng.integers(0, 256, (6, 6, 3)).astype(np.uint8)
        image = cv2.resize(small, (48, 48), interpolation=cv2.INTER_LINEAR)
        Image.fromarray(image).save(folder / f'{i}.png')
        images.append(image)
        samples.append((str(folder / f'{i}.png'), i))
    out = folder / 'square.beton'
    write_beton(samples, out, [str(i) for i in range(12)], write_mode='raw',
                max_resolution=0, num_workers=1)
    return out, np.stack(images)


def test_val_output_is_the_normalised_image(square_beton):
    path, images = square_beton
    loader = val_loader(path, batch_size=5, resolution=48, num_workers=2, center_ratio=1.0)
    batches = list(loader)
    assert [len(labels) for _, labels in batches] == [5, 5, 2]  # last batch kept
    x, y = batches[0]
    assert x.shape == (5, 3, 48, 48) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.is_contiguous(memory_format=torch.channels_last)
    for x, y in batches:
        np.testing.assert_allclose(to_pixels(x), images[y.numpy()], atol=1e-3)


def test_batches_smaller_than_the_thread_count_give_the_same_pixels(betons):
    """Each decoding thread reuses one image's scratch when the batch has at least one
    slot per thread, else each image uses its own: both must give the same images."""
    _, val = betons
    def pixels(batch_size):
        loader = val_loader(val, batch_size=batch_size, resolution=32, num_workers=2)
        return torch.cat([x.clone() for x, _ in loader])  # batches live in reused buffers
    np.testing.assert_array_equal(pixels(1).numpy(), pixels(8).numpy())


def test_train_flips_half_the_images(square_beton):
    path, images = square_beton
    loader = train_loader(path, batch_size=12, resolution=48, num_workers=2,
                          scale=(1.0, 1.0), ratio=(1.0, 1.0))
    flips = []
    for _ in range(4):
        for x, y in loader:
            for pixels, label in zip(to_pixels(x), y.numpy()):
                if np.allclose(pixels, images[label], atol=1e-3):
                    flips.append(False)
                else:
                    np.testing.assert_allclose(pixels, images[label][:, ::-1], atol=1e-3)
                    flips.append(True)
    assert 0.2 < np.mean(flips) < 0.8


def test_uint8_decoder_path_normalised_in_torch(square_beton):
    """The path CUDA devices take (uint8 from the decoder, normalised in torch), run on
    the CPU so that it is tested without a GPU."""
    path, images = square_beton
    decoder = FusedCropDecoder((48, 48), random_crop=True, scale=(1.0, 1.0), ratio=(1.0, 1.0),
                               flip=True)
    loader = ImageLoader(path, decoder, batch_size=12, num_workers=2, device='cpu',
                         order=ShardedOrder(), seed=0, in_memory=True, drop_last=True,
                         dtype=torch.float32, batches_ahead=2)
    flips = []
    for _ in range(3):
        for x, y in loader:
            assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
            for pixels, label in zip(to_pixels(x), y.numpy()):
                flipped = not np.allclose(pixels, images[label], atol=1e-3)
                expected = images[label][:, ::-1] if flipped else images[label]
                np.testing.assert_allclose(pixels, expected, atol=1e-3)
                flips.append(flipped)
    assert 0.2 < np.mean(flips) < 0.8


def test_shapes_range_and_resolution_change(betons):
    train, val = betons
    loader = train_loader(train, batch_size=8, resolution=32, num_workers=2)
    low = (0 - MEAN.max()) / STD.min() - 1e-3
    high = (255 - MEAN.min()) / STD.min() + 1e-3
    for resolution in (32, 64, 48):
        loader.resolution = resolution
        for x, y in loader:
            assert x.shape == (8, 3, resolution, resolution)
            assert x.is_contiguous(memory_format=torch.channels_last)
            assert low <= x.min().item() and x.max().item() <= high
            assert 0 <= y.min().item() and y.max().item() < 4
    assert len(loader) == 48 // 8
    x, _ = next(iter(val_loader(val, batch_size=20, resolution=40, num_workers=2,
                                dtype=torch.bfloat16)))
    assert x.dtype == torch.bfloat16 and x.shape == (20, 3, 40, 40)
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_reduced_scale_jpeg_decode_matches_a_full_decode(tmp_path):
    """Images stored at 300-450 px and read at 48 px with DCT scaling take the 1/4-scale
    decode path; the result must match a full decode + area resize of the same crop."""
    rng = np.random.default_rng(1)
    files = []
    for i in range(8):
        width, height = (int(v) for v in rng.integers(300, 450, 2))
        small = rng.integers(0, 256, (5, 5, 3)).astype(np.uint8)
        smooth = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
        files.append(tmp_path / f'{i}.JPEG')
        Image.fromarray(smooth).save(files[-1], quality=95)
    out = tmp_path / 'big.beton'
    write_beton([(str(f), 0) for f in files], out, ['x'], max_resolution=0, jpeg_quality=95,
                num_workers=1)
    x, _ = next(iter(val_loader(out, batch_size=8, resolution=48, num_workers=1,
                                center_ratio=0.875, dct_scaling=True)))
    for pixels, file in zip(to_pixels(x), files):
        full = np.asarray(Image.open(file).convert('RGB'))
        h, w, _ = full.shape
        side = int(0.875 * min(h, w))
        top, left = (h - side) // 2, (w - side) // 2
        reference = cv2.resize(full[top:top + side, left:left + side], (48, 48),
                               interpolation=cv2.INTER_AREA)
        assert np.abs(pixels - reference).mean() < 3  # of 255


@pytest.fixture(scope='module')
def indexed_beton(synth, tmp_path_factory):
    """23 samples whose label is their index, so that coverage can be counted."""
    image = str(sorted((synth / 'val').rglob('*.JPEG'))[0])
    out = tmp_path_factory.mktemp('indexed') / 'indexed.beton'
    write_beton([(image, i) for i in range(23)], out, [str(i) for i in range(23)],
                max_resolution=32, num_workers=1)
    return out


def _labels(loader):
    return [int(v) for _, labels in loader for v in labels]


def test_two_ranks_cover_the_val_split_exactly_once(indexed_beton):
    shards = [_labels(val_loader(indexed_beton, batch_size=4, resolution=16, num_workers=1,
                                 rank=r, world_size=2)) for r in (0, 1)]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(23))


def test_two_train_ranks_are_disjoint_equal_and_reshuffled(indexed_beton):
    loaders = [train_loader(indexed_beton, batch_size=1, resolution=16, num_workers=1,
                            rank=r, world_size=2, seed=5) for r in (0, 1)]
    assert len(loaders[0]) == len(loaders[1]) == 11  # same step count on every rank
    epochs = []
    for _ in range(2):
        shards = [_labels(loader) for loader in loaders]
        assert not set(shards[0]) & set(shards[1])
        assert len(set(shards[0] + shards[1])) == 22  # one of 23 sits out
        epochs.append(shards[0])
    assert epochs[0] != epochs[1]


def test_bad_arguments(betons, tmp_path):
    train, _ = betons
    with pytest.raises(DatasetError, match='missing.beton'):
        train_loader(tmp_path / 'missing.beton', batch_size=4, resolution=32, num_workers=1)
    with pytest.raises(RuntimeError, match='process group'):
        train_loader(train, batch_size=4, resolution=32, num_workers=1, distributed=True)
    with pytest.raises(ValueError, match='rank'):
        val_loader(train, batch_size=4, resolution=32, num_workers=1, rank=2, world_size=2)
    loader = val_loader(train, batch_size=4, resolution=32, num_workers=1)
    with pytest.raises(ValueError, match='resolution'):
        loader.resolution = 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_batches_are_normalised_on_the_device(square_beton):
    path, images = square_beton
    loader = val_loader(path, batch_size=4, resolution=48, num_workers=2, center_ratio=1.0,
                        device='cuda', dtype=torch.float32)
    x, y = next(iter(loader))
    assert x.is_cuda and y.is_cuda and x.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(to_pixels(x.cpu()), images[y.cpu().numpy()], atol=1e-3)


def _two_epochs(path, seed):
    loader = train_loader(path, batch_size=8, resolution=64, num_workers=2, seed=seed)
    return [torch.cat([images.clone() for images, _ in loader]) for _ in range(2)]


def test_same_seed_same_augmentations_new_epoch_new_ones(betons):
    first, again, other = (_two_epochs(betons[0], seed) for seed in (5, 5, 6))
    for epoch in range(2):
        assert torch.equal(first[epoch], again[epoch])
        assert not torch.equal(first[epoch], other[epoch])
    assert not torch.equal(first[0], first[1])


def test_setting_the_epoch_replays_that_epochs_order(betons):
    def labels_of_epoch(loader):
        return torch.cat([labels.clone() for _, labels in loader])
    loader = train_loader(betons[0], batch_size=8, resolution=32, num_workers=2, seed=1)
    epochs = [labels_of_epoch(loader) for _ in range(3)]
    assert loader.epoch == 3
    loader.epoch = 1
    assert torch.equal(labels_of_epoch(loader), epochs[1])
    assert not torch.equal(epochs[0], epochs[1])


def _record_set_device(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, 'set_device',
                        lambda device: calls.append((device, threading.current_thread())))
    return calls


def test_each_decoding_thread_makes_the_loaders_gpu_current(square_beton, monkeypatch):
    """CUDA's current device is per thread: ffcv's epoch thread must select the rank's
    GPU itself, or its stream switches create a context on GPU 0."""
    calls = _record_set_device(monkeypatch)
    loader = val_loader(square_beton[0], batch_size=5, resolution=16, num_workers=1)
    assert [len(labels) for _, labels in loader] == [5, 5, 2]
    assert calls == []  # a CPU loader leaves CUDA alone
    # the hook a loader on cuda:1 gets, run by this CPU pipeline's threads
    loader.loader.thread_setup = partial(loaders.use_device, torch.device('cuda', 1))
    for _ in range(2):
        assert [len(labels) for _, labels in loader] == [5, 5, 2]
    assert [device for device, _ in calls] == [torch.device('cuda', 1)] * 2
    threads = [thread for _, thread in calls]
    assert all(isinstance(thread, EpochIterator) for thread in threads)
    assert threading.main_thread() not in threads and threads[0] is not threads[1]


def test_a_gpu_loader_hands_its_own_device_to_its_threads(square_beton, monkeypatch):
    calls = _record_set_device(monkeypatch)
    loader = val_loader(square_beton[0], batch_size=5, resolution=16, num_workers=1,
                        device='cuda:1')  # building one touches no GPU
    loader.loader.thread_setup()
    assert [device for device, _ in calls] == [torch.device('cuda', 1)]


def test_a_bare_cuda_device_is_pinned_to_the_current_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 3)
    assert loaders.resolve_device('cuda') == torch.device('cuda', 3)
    assert loaders.resolve_device('cuda:1') == torch.device('cuda', 1)
    assert loaders.resolve_device('cpu') == torch.device('cpu')


def test_an_error_in_the_decoding_thread_reaches_the_consumer(square_beton):
    loader = val_loader(square_beton[0], batch_size=5, resolution=16, num_workers=1)

    def broken():
        raise OSError('no such GPU')

    loader.loader.thread_setup = broken
    caught = []

    def consume():
        try:
            next(iter(loader))
        except RuntimeError as error:
            caught.append(error)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    consumer.join(timeout=60)
    assert not consumer.is_alive(), 'the consumer still waits for a batch'
    assert len(caught) == 1 and isinstance(caught[0].__cause__, OSError)


def test_a_last_batch_of_one_keeps_its_label_axis(square_beton):
    path, images = square_beton
    batches = list(val_loader(path, batch_size=11, resolution=48, num_workers=1,
                              center_ratio=1.0))
    x, y = batches[-1]
    assert x.shape == (1, 3, 48, 48) and y.shape == (1,) and y.tolist() == [11]
    np.testing.assert_allclose(to_pixels(x)[0], images[11], atol=1e-3)


def _cuda_pipelines_copying_to_the_cpu(copies):
    build_pipelines = loaders.build_pipelines

    def build(decoder, device):
        pipelines = build_pipelines(decoder, torch.device('cuda', 0))
        for ops in pipelines.values():
            for op in ops:
                if isinstance(op, ToDevice):
                    op.device = torch.device('cpu')
                    copies.append(op)
        return pipelines
    return build


def test_the_cuda_pipelines_take_a_last_batch_of_one(square_beton, monkeypatch):
    """The operations a CUDA loader runs (uint8 decode, label squeeze, ToDevice,
    normalisation in torch), with the copies retargeted to the CPU: ToDevice indexes
    its input's first axis, so a 0-d label batch would fail there."""
    path, images = square_beton
    copies = []
    monkeypatch.setattr(loaders, 'build_pipelines', _cuda_pipelines_copying_to_the_cpu(copies))
    decoder = FusedCropDecoder((48, 48), random_crop=False, center_ratio=1.0)
    loader = ImageLoader(path, decoder, batch_size=11, num_workers=1, device='cpu',
                         order=ShardedOrder(shuffle=False), seed=0, in_memory=True,
                         drop_last=False, dtype=torch.float32, batches_ahead=2)
    assert len(copies) == 2  # images and labels
    batches = list(loader)
    assert [tuple(labels.shape) for _, labels in batches] == [(11,), (1,)]
    assert torch.equal(torch.cat([labels for _, labels in batches]), torch.arange(12))
    for x, y in batches:
        np.testing.assert_allclose(to_pixels(x), images[y.numpy()], atol=1e-3)


def test_cuda_loaders_normalise_in_torch_not_with_ffcvs_cupy_operation(square_beton):
    path, _ = square_beton
    built = [make(path, batch_size=4, resolution=16, num_workers=1, device='cuda:0')
             for make in (train_loader, val_loader)]  # building one touches no GPU
    for loader in built:
        specs = loader.loader.pipeline_specs
        for field in ('image', 'label'):
            decoder, ops = specs[field].decoder, specs[field].transforms
            assert not any(isinstance(op, NormalizeImage) for op in [decoder, *ops])
            copies = [op for op in ops if isinstance(op, ToDevice)]
            assert [op.device for op in copies] == [torch.device('cuda', 0)]
        assert not loader.decoder.normalize  # uint8 is copied, then normalised in torch


_BLOCK_CUPY = """
import importlib.abc, sys
class BlockCupy(importlib.abc.MetaPathFinder):
    asked = []
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'cupy':
            BlockCupy.asked.append(name)
            raise ImportError('cupy is blocked by the test')
sys.meta_path.insert(0, BlockCupy())
from ffcv_imagenet.data.read.loaders import train_loader, val_loader
for device in ('cpu', 'cuda:0'):
    for make in (train_loader, val_loader):
        make(sys.argv[1], batch_size=4, resolution=16, num_workers=1, device=device)
print(BlockCupy.asked, 'cupy' in sys.modules)
"""


def test_importing_and_building_the_loaders_never_imports_cupy(square_beton):
    # a fresh interpreter, so that the import itself is watched too; building a loader
    # generates every operation's code, where ffcv's GPU NormalizeImage imports cupy
    done = subprocess.run([sys.executable, '-c', _BLOCK_CUPY, str(square_beton[0])],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == '[] False'


def test_decoder_dtype_picks_where_images_are_normalised(square_beton):
    path, images = square_beton
    loader = val_loader(path, batch_size=12, resolution=48, num_workers=1, center_ratio=1.0,
                        decoder_dtype=torch.uint8)
    assert not loader.decoder.normalize
    x, y = next(iter(loader))
    assert x.dtype == torch.float32
    np.testing.assert_allclose(to_pixels(x), images[y.numpy()], atol=1e-3)
    on_gpu = val_loader(path, batch_size=4, resolution=16, num_workers=1, device='cuda:0',
                        decoder_dtype=torch.float32)
    assert on_gpu.decoder.normalize
    with pytest.raises(ValueError, match='decoder_dtype'):
        val_loader(path, batch_size=4, resolution=16, num_workers=1,
                   decoder_dtype=torch.float16)


_RANK_SCRIPT = """
import json, sys, torch
from ffcv_imagenet.data.read.loaders import val_loader
path, rank = sys.argv[1], int(sys.argv[2])
torch.cuda.set_device(rank)  # as training's select_device does, in the main thread only
loader = val_loader(path, batch_size=5, resolution=48, num_workers=1, device=f'cuda:{rank}')
for _ in range(2):
    for images, labels in loader:
        assert images.device.index == labels.device.index == rank
        (images.sum() + labels.sum()).item()
torch.cuda.synchronize()
print(json.dumps([torch._C._cuda_hasPrimaryContext(i)
                  for i in range(torch.cuda.device_count())]))
"""


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason='needs 2 CUDA devices')
def test_each_rank_holds_a_cuda_context_on_its_own_gpu_only(square_beton):
    ranks = [subprocess.Popen([sys.executable, '-c', _RANK_SCRIPT, str(square_beton[0]),
                               str(rank)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for rank, process in enumerate(ranks):
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
        contexts = json.loads(out.strip().splitlines()[-1])
        assert contexts == [gpu == rank for gpu in range(len(contexts))]


def test_leaving_endless_batches_ends_a_thread_that_decoded_its_whole_epoch(betons):
    """48 images in 6 batches, 3 queued ahead: after 3 batches the thread has queued the
    rest and waits to queue the end of the epoch, which close() alone does not stop."""
    loader = train_loader(betons[0], batch_size=8, resolution=16, num_workers=1,
                          batches_ahead=3)
    assert len(loader) == 6
    finished = []

    def take_three_and_leave():
        with loaders.endless_batches(loader) as batches:
            for _ in range(3):
                next(batches)
            threads = [t for t in threading.enumerate() if isinstance(t, EpochIterator)]
            deadline = time.monotonic() + 60
            while not any(t.output_queue.full() for t in threads):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            time.sleep(0.5)  # past its last batch, to the end-of-epoch marker
        finished.append(True)

    worker = threading.Thread(target=take_three_and_leave, daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert finished == [True], 'leaving endless_batches waits forever for the thread'


def test_a_new_centre_ratio_takes_effect_at_the_next_epoch(betons):
    """The decoder hands ffcv the same code while its settings stay (it is asked for
    code every epoch); a changed ratio must still give new code, and new crops."""
    def first_batch(loader):
        return next(iter(loader))[0].clone()
    loader = val_loader(betons[1], batch_size=8, resolution=32, num_workers=2,
                        center_ratio=1.0)
    whole = first_batch(loader)
    assert torch.equal(first_batch(loader), whole)
    loader.center_ratio = 0.5
    half = first_batch(loader)
    fresh = val_loader(betons[1], batch_size=8, resolution=32, num_workers=2,
                       center_ratio=0.5)
    assert not torch.equal(half, whole)
    assert torch.equal(half, first_batch(fresh))


# --- a mid-epoch start and a batch size that changes between epochs ----------------------

def test_start_batch_continues_the_epoch_where_it_stopped(betons):
    """The batches after ``start_batch`` are those an unbroken epoch yields from
    there: same images, same order, same random crops."""
    def epoch_batches(start):
        loader = train_loader(betons[0], batch_size=8, resolution=32, num_workers=2,
                              seed=5)
        loader.epoch, loader.start_batch = 1, start
        assert len(loader) == 6 - start
        return [(images.clone(), labels.clone()) for images, labels in loader]
    whole, rest = epoch_batches(0), epoch_batches(2)
    assert len(rest) == 4
    for (images, labels), (again, again_labels) in zip(whole[2:], rest):
        assert torch.equal(labels, again_labels) and torch.equal(images, again)


def _epoch_labels(loader, epoch):
    loader.epoch = epoch
    return torch.cat([labels.clone() for _, labels in loader]).numpy()


def test_the_loaders_batch_size_changes_between_epochs_keeping_the_order(betons):
    loader = train_loader(betons[0], batch_size=16, resolution=32, num_workers=1)
    first = _epoch_labels(loader, 3)
    assert len(loader) == 3
    loader.batch_size = 8
    assert loader.batch_size == 8 and len(loader) == 6
    batches = []
    loader.epoch = 3
    for images, labels in loader:
        batches.append(labels.clone())
        assert images.shape == (8, 3, 32, 32)
    # the order is a function of (seed, epoch) alone, whatever the batch size
    np.testing.assert_array_equal(torch.cat(batches).numpy(), first)
    loader.batch_size = 12
    loader.start_batch = 2  # a mid-epoch resume skips whole batches of the new size
    np.testing.assert_array_equal(_epoch_labels(loader, 3), first[24:48])
    with pytest.raises(ValueError, match='batch_size must be positive'):
        loader.batch_size = 0
