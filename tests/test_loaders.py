import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from ffcv_imagenet.data.decoders import IMAGENET_MEAN, IMAGENET_STD, FusedCropDecoder
from ffcv_imagenet.data.loaders import ImageLoader, ShardedOrder, train_loader, val_loader
from ffcv_imagenet.data.writer import write_beton

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
    """Images stored at 300-450 px and read at 48 px take the 1/4-scale decode path;
    the result must match a full decode + area resize of the same crop."""
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
                                center_ratio=0.875)))
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
    with pytest.raises(FileNotFoundError, match='missing.beton'):
        train_loader(tmp_path / 'missing.beton', batch_size=4, resolution=32, num_workers=1)
    with pytest.raises(RuntimeError, match='process group'):
        train_loader(train, batch_size=4, resolution=32, num_workers=1, distributed=True)
    with pytest.raises(ValueError, match='rank'):
        val_loader(train, batch_size=4, resolution=32, num_workers=1, rank=2, world_size=2)
    loader = val_loader(train, batch_size=4, resolution=32, num_workers=1)
    with pytest.raises(ValueError, match='resolution'):
        loader.resolution = 0


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
