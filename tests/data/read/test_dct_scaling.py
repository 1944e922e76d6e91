"""Decoding scale of the train loader's JPEG crops (data/read/decoders.py): by default a
crop at least twice the output size decodes at full size and is resized once, as sharp
as the published one-step area resize of a full decode; ``dct_scaling`` decodes it at
reduced scale instead, blurrier. On a real photograph stored as the published
ResNet-50 files store JPEGs (500 px longest side, quality 90)."""
import cv2
import matplotlib
import numpy as np
import pytest
import torch
from ffcv.libffcv import imdecode

from ffcv_imagenet.data.read.decoders import decoded_crop
from ffcv_imagenet.data.read.loaders import train_loader
from ffcv_imagenet.data.read.resize import resize_kernel, scratch_sizes
from ffcv_imagenet.data.write.writer import write_beton
from ffcv_imagenet.tools.bench import decode_ceiling

PHOTO = f'{matplotlib.get_data_path()}/sample_data/grace_hopper.jpg'
OUT, BATCH, SEED = 160, 8, 3


@pytest.fixture(scope='module')
def photo(tmp_path_factory):
    """48 copies of the photograph (each gets its own crop) in a .beton, and its
    JPEGs."""
    path = tmp_path_factory.mktemp('photo') / 'photo.beton'
    write_beton([(PHOTO, 0)] * 48, path, ['hopper'], max_resolution=500, write_mode='jpg',
                jpeg_quality=90, num_workers=1)
    return path, decode_ceiling.load_jpegs(path)


def _first_epoch(path, dct_scaling):
    """The train loader's first epoch as decoded, (n, H, W, 3) uint8."""
    loader = train_loader(path, batch_size=BATCH, resolution=OUT, num_workers=1, seed=SEED,
                          decoder_dtype=torch.uint8, dct_scaling=dct_scaling)
    return np.concatenate([next(t for t in batch if t.ndim == 4).permute(0, 2, 3, 1).numpy()
                           for batch in loader.loader])


@pytest.fixture(scope='module')
def epochs(photo):
    """{dct_scaling: first epoch's images} and the crops that scaling would decode at
    reduced scale: (index in the epoch, image, denominator, crop in stored pixels)."""
    path, jpegs = photo
    scaled = decode_ceiling.train_plan(jpegs, OUT, 0, batch_size=BATCH, seed=SEED,
                                       dct_scaling=True)
    crops = decode_ceiling.train_plan(jpegs, OUT, 0, batch_size=BATCH, seed=SEED).boxes
    large = [(i, int(scaled.positions[i]), int(scaled.denoms[i]), tuple(int(v) for v in crops[i]))
             for i in np.flatnonzero(scaled.denoms > 1)]
    assert len(large) >= 8  # enough crops of the photograph take the reduced-scale path
    return {flag: _first_epoch(path, flag) for flag in (False, True)}, large


def _frame(jpegs, j, denom):
    """JPEG ``j`` decoded whole by ffcv's imdecode (the published loader's) at 1/denom."""
    height, width = int(jpegs.heights[j]), int(jpegs.widths[j])
    source = jpegs.data[jpegs.offsets[j]:jpegs.offsets[j] + jpegs.sizes[j]]
    frame = np.zeros(height * width * 3, dtype=np.uint8)
    assert imdecode(source, frame, height, width, height, width, 0, 0, 1, denom,
                    False, False) == 0
    rows, columns = -(-height // denom), -(-width // denom)
    return frame[:rows * columns * 3].reshape(rows, columns, 3)


def _area_resize(frame, top, left, height, width):
    """This project's area resize of a crop of ``frame`` to OUT x OUT, uint8."""
    out = np.zeros((OUT, OUT, 3), dtype=np.uint8)
    floats, indices = scratch_sizes(*frame.shape[:2], OUT, OUT)
    resize_kernel()(frame, top, left, height, width, out, False, np.ones(3, np.float32),
                    np.zeros(3, np.float32), np.zeros(floats, np.float32),
                    np.zeros(indices, np.uint64))
    return out


def _gradient_energy(image):
    pixels = image.astype(np.float64)
    return np.abs(np.diff(pixels, axis=0)).mean() + np.abs(np.diff(pixels, axis=1)).mean()


def _unflipped(image, reference):
    """``image`` as drawn, before the loader's random horizontal flip: whichever way
    round is nearer ``reference``."""
    mirrored = image[:, ::-1]
    nearer = np.abs(mirrored.astype(np.int64) - reference).sum() < np.abs(
        image.astype(np.int64) - reference).sum()
    return mirrored if nearer else image


def _against_reference(images, large, jpegs):
    """The large crops unflipped, and the mean over them of (gradient energy / the
    reference's, mean absolute difference from it); the reference: a full decode, then
    OpenCV's INTER_AREA of the crop."""
    crops, ratios, differences = [], [], []
    for i, j, _, (top, left, height, width) in large:
        reference = cv2.resize(_frame(jpegs, j, 1)[top:top + height, left:left + width],
                               (OUT, OUT), interpolation=cv2.INTER_AREA)
        crops.append(_unflipped(images[i], reference))
        ratios.append(_gradient_energy(crops[-1]) / _gradient_energy(reference))
        differences.append(np.abs(crops[-1].astype(np.float64) - reference).mean())
    return np.stack(crops), np.mean(ratios), np.mean(differences)


def test_large_crops_are_as_sharp_as_one_area_resize_of_the_full_decode(photo, epochs):
    (decoded, large), jpegs = epochs, photo[1]
    # full decode + this project's area resize
    full_scale = np.stack([_area_resize(_frame(jpegs, j, 1), *crop) for _, j, _, crop in large])
    crops, energy, difference = _against_reference(decoded[False], large, jpegs)
    _, _, full_scale_difference = _against_reference(full_scale, list(
        (k, *rest) for k, (_, *rest) in enumerate(large)), jpegs)
    assert abs(energy - 1) < 0.02
    assert difference <= full_scale_difference
    assert np.array_equal(crops, full_scale)  # by default these crops take that path


def test_dct_scaling_decodes_large_crops_at_reduced_scale_and_blurs_them(photo, epochs):
    (decoded, large), jpegs = epochs, photo[1]
    crops, energy, difference = _against_reference(decoded[True], large, jpegs)
    for crop, (_, j, denom, (top, left, height, width)) in zip(crops, large):
        frame = _frame(jpegs, j, denom)
        box = decoded_crop(top, left, height, width, *frame.shape[:2], denom)
        assert np.array_equal(crop, _area_resize(frame, *box))
    assert energy < 0.97 and difference > 1  # two box filters blur more than one
    # the other crops decode at full size either way
    others = np.setdiff1d(np.arange(len(decoded[False])), [i for i, *_ in large])
    assert len(others) and np.array_equal(decoded[True][others], decoded[False][others])
