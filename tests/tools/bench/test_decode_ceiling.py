"""The decoding ceiling (tools/bench/decode_ceiling.py): the stored JPEG bytes, the
scales and crops the loaders' decoders choose, raw images left out, the region pass."""
import io

import numpy as np
import pytest
import torch
from ffcv.fields.rgb_image import IMAGE_MODES
from ffcv.libffcv import imdecode
from ffcv.reader import Reader
from PIL import Image

from ffcv_imagenet.data.read import decoders
from ffcv_imagenet.tools.bench import decode_ceiling
from ffcv_imagenet.data.folders import list_tree
from ffcv_imagenet.data.read.jpeg_region import decode_region, region_of
from ffcv_imagenet.data.read.loaders import train_loader, val_loader
from ffcv_imagenet.data.write.writer import write_beton


@pytest.fixture(scope='module')
def jpegs(betons):
    return decode_ceiling.load_jpegs(betons[1])


def _image_metadata(reader):
    return reader.metadata[f"f{reader.field_names.index('image')}"]


def test_buffer_holds_exactly_the_bytes_ffcvs_reader_hands_the_decoder(betons, jpegs):
    reader = Reader(str(betons[1]))
    sizes = dict(zip(reader.alloc_table['ptr'].tolist(), reader.alloc_table['size'].tolist()))
    stored = np.memmap(betons[1], dtype=np.uint8, mode='r')
    images = _image_metadata(reader)
    assert jpegs.raw_images == 0 and len(jpegs.sizes) == reader.num_samples
    for j, record in enumerate(images):
        ptr = int(record['data_ptr'])
        held = jpegs.data[jpegs.offsets[j]:jpegs.offsets[j] + jpegs.sizes[j]]
        assert np.array_equal(held, stored[ptr:ptr + sizes[ptr]])
        picture = Image.open(io.BytesIO(held.tobytes()))
        assert picture.format == 'JPEG'
        assert picture.size == (record['width'], record['height'])
        assert (jpegs.heights[j], jpegs.widths[j]) == (record['height'], record['width'])


def test_every_planned_image_is_decoded_at_its_scale(jpegs):
    plan = decode_ceiling.val_plan(jpegs, resolution=24, dct_scaling=True)
    _, sums = decode_ceiling.decode_pass(jpegs, plan, workers=2, checksum=True)
    for j, denom in zip(plan.positions, plan.denoms):
        height, width = int(jpegs.heights[j]), int(jpegs.widths[j])
        frame = np.zeros(height * width * 3, dtype=np.uint8)
        source = jpegs.data[jpegs.offsets[j]:jpegs.offsets[j] + jpegs.sizes[j]]
        imdecode(source, frame, height, width, height, width, 0, 0, 1, int(denom),
                 False, False)
        decoded = -(-height // denom) * -(-width // denom) * 3
        assert sums[list(plan[0]).index(j)] == int(frame[:decoded].sum(dtype=np.int64)) > 0


def _denominator_as_pixels(source, dst, denom, top, left, crop_h, crop_w, geometry, full):
    # stands in for decode_region: the crop alone, every byte the denominator, which
    # resizing keeps
    geometry[0], geometry[1], geometry[2], geometry[3] = top, left, crop_h, crop_w
    dst[:crop_h * crop_w * 3] = denom
    return 0


def _denominators_the_decoder_used(make_loader, epochs, monkeypatch):
    """Per epoch, per image in the loader's order, the DCT denominator the decoder
    of ``make_loader()`` passed to decode_region."""
    monkeypatch.setattr(decoders, 'decode_region', _denominator_as_pixels)
    loader, used = make_loader(), []
    for _ in range(epochs):
        # clone: the batches are views into ffcv's rotating buffers
        batches = [next(t for t in batch if t.ndim == 4)[:, 0, 0, 0].clone()
                   for batch in loader.loader]
        used.append(torch.cat(batches).long().numpy())
    return loader, used


def test_train_plan_has_the_scales_the_train_decoder_chooses(betons, monkeypatch):
    jpegs = decode_ceiling.load_jpegs(betons[0])
    loader, used = _denominators_the_decoder_used(
        lambda: train_loader(betons[0], batch_size=7, resolution=16, num_workers=2,
                             seed=5, decoder_dtype=torch.uint8, dct_scaling=True), 2,
        monkeypatch)
    for epoch in range(2):
        positions, denoms, _ = decode_ceiling.train_plan(jpegs, 16, epoch, batch_size=7,
                                                         seed=5, dct_scaling=True)
        assert len(positions) == len(loader) * 7  # the last partial batch dropped
        assert np.array_equal(denoms, used[epoch])
        assert len(set(denoms.tolist())) > 1  # the crops vary enough to tell
    assert not np.array_equal(decode_ceiling.train_plan(jpegs, 16, 0, batch_size=7,
                                                        dct_scaling=True).denoms,
                              used[0])  # another seed, other crops


def test_val_plan_has_the_scales_the_val_decoder_chooses(betons, jpegs, monkeypatch):
    _, (used,) = _denominators_the_decoder_used(
        lambda: val_loader(betons[1], batch_size=6, resolution=24, num_workers=2,
                           center_ratio=0.5, decoder_dtype=torch.uint8, dct_scaling=True),
        1, monkeypatch)
    positions, denoms, _ = decode_ceiling.val_plan(jpegs, 24, center_ratio=0.5,
                                                   dct_scaling=True)
    assert np.array_equal(positions, np.arange(len(used)))
    assert np.array_equal(denoms, used)


def test_raw_pixel_images_are_counted_and_left_out(synth, tmp_path):
    samples, classes = list_tree(synth / 'train')
    path = tmp_path / 'mixed.beton'
    np.random.seed(0)  # ffcv draws each image's storage mode from numpy's generator
    write_beton(samples[:12], path, classes, max_resolution=32, write_mode='proportion',
                num_workers=1)
    modes = _image_metadata(Reader(str(path)))['mode']
    jpegs = decode_ceiling.load_jpegs(path)
    raw = int((modes == IMAGE_MODES['raw']).sum())
    assert 0 < jpegs.raw_images == raw < 12 and len(jpegs.sizes) == 12 - raw
    assert np.array_equal(jpegs.positions < 0, modes == IMAGE_MODES['raw'])
    positions, denoms, _ = decode_ceiling.train_plan(jpegs, 8, 0, batch_size=4)
    assert len(positions) == 12 - raw  # 3 whole batches of 4
    assert (positions >= 0).all() and (denoms >= 1).all()
    run = decode_ceiling.next_pass(
        jpegs, lambda p: decode_ceiling.train_plan(jpegs, 8, p, batch_size=4), workers=2)
    rates = [run(), run()]
    assert len(rates) == 2 and min(rates) > 0


def test_the_region_pass_decodes_the_part_around_each_planned_crop(betons):
    jpegs = decode_ceiling.load_jpegs(betons[0])
    plan = decode_ceiling.train_plan(jpegs, 16, 0, batch_size=4)
    _, full = decode_ceiling.decode_pass(jpegs, plan, workers=2, checksum=True)
    _, region = decode_ceiling.decode_pass(jpegs, plan, workers=2, checksum=True,
                                           region=True)
    buffer = np.zeros(int((jpegs.heights * jpegs.widths).max()) * 3, dtype=np.uint8)
    geometry = np.zeros(4, dtype=np.int64)
    for i, (j, denom, box) in enumerate(zip(*plan)):
        source = jpegs.data[jpegs.offsets[j]:jpegs.offsets[j] + jpegs.sizes[j]]
        assert decode_region(source, buffer, int(denom), *map(int, box), geometry) == 0
        assert region[i] == int(region_of(buffer, geometry).sum(dtype=np.int64)) > 0
    # the random crops leave parts of the frames undecoded
    assert region.sum() < full.sum()
