"""Decoding only the part of a JPEG around a crop (jpeg_region.c): the crop's pixels
equal those of ffcv's full-frame imdecode at the same scale, for every chroma
subsampling, grey and progressive JPEGs, odd sizes and crops at the edges; less of the
frame is decoded; bad input gives an error code and a black crop, never a write past
the buffer."""
import io

import numpy as np
import pytest
from ffcv.libffcv import imdecode
from PIL import Image

from ffcv_imagenet.data.read.jpeg_region import decode_region, region_of


def _jpeg(height, width, seed=0, mode='RGB', **save):
    """Smooth gradients plus noise (JPEG-like content), encoded by PIL."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width]
    pixels = np.stack([(x * 255 // max(1, width - 1)), (y * 255 // max(1, height - 1)),
                       ((x + y) * 3) % 256], axis=-1).astype(np.int16)
    pixels = np.clip(pixels + rng.integers(-40, 40, pixels.shape), 0, 255).astype(np.uint8)
    picture = Image.fromarray(pixels).convert(mode)
    out = io.BytesIO()
    picture.save(out, format='JPEG', quality=90, **save)
    return np.frombuffer(out.getvalue(), dtype=np.uint8).copy()


def _full_frame(source, height, width, denom):
    frame = np.zeros(height * width * 3, dtype=np.uint8)
    assert imdecode(source, frame, height, width, height, width, 0, 0, 1, denom,
                    False, False) == 0
    dec_h, dec_w = -(-height // denom), -(-width // denom)
    return frame[:dec_h * dec_w * 3].reshape(dec_h, dec_w, 3)


def _crops(dec_h, dec_w, rng, count=12):
    """Random crops plus the four corners and the whole frame."""
    crops = [(0, 0, dec_h, dec_w), (0, 0, 5, 7), (dec_h - 6, dec_w - 3, 6, 3),
             (0, dec_w - 9, 4, 9), (dec_h - 1, 0, 1, dec_w)]
    for _ in range(count):
        h, w = rng.integers(1, dec_h + 1), rng.integers(1, dec_w + 1)
        crops.append((rng.integers(0, dec_h - h + 1), rng.integers(0, dec_w - w + 1), h, w))
    return [tuple(int(v) for v in crop) for crop in crops]


KINDS = {
    '4:2:0': dict(subsampling=2),
    '4:2:2': dict(subsampling=1),
    '4:4:4': dict(subsampling=0),
    'grey': dict(mode='L'),
    'progressive 4:2:0': dict(subsampling=2, progressive=True),
}


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('size', [(203, 157), (96, 128)])
def test_the_crop_equals_the_full_decode_at_every_scale(kind, size):
    height, width = size
    source = _jpeg(height, width, **KINDS[kind])
    rng = np.random.default_rng(height + len(kind))
    buffer = np.zeros(height * width * 3, dtype=np.uint8)
    geometry = np.zeros(4, dtype=np.int64)
    for denom in (1, 2, 4, 8):
        frame = _full_frame(source, height, width, denom)
        for top, left, h, w in _crops(*frame.shape[:2], rng):
            assert decode_region(source, buffer, denom, top, left, h, w, geometry) == 0
            first_row, first_column, rows, columns = geometry
            region = region_of(buffer, geometry)
            assert 0 <= first_row <= top and top + h <= first_row + rows <= frame.shape[0]
            assert 0 <= first_column <= left
            assert left + w <= first_column + columns <= frame.shape[1]
            crop = region[top - first_row:top - first_row + h,
                          left - first_column:left - first_column + w]
            assert np.array_equal(crop, frame[top:top + h, left:left + w]), (
                denom, (top, left, h, w))


def test_less_of_the_frame_is_decoded_than_the_whole():
    height, width = 256, 192
    source = _jpeg(height, width)
    buffer = np.zeros(height * width * 3, dtype=np.uint8)
    geometry = np.zeros(4, dtype=np.int64)
    # a crop in the top-left quarter: the rows below and the columns right of it
    # (beyond one 16-pixel iMCU of 4:2:0 margin, rounded to whole iMCUs) are not decoded
    assert decode_region(source, buffer, 1, 10, 20, 100, 60, geometry) == 0
    assert geometry.tolist() == [0, 0, 126, 96]
    assert decode_region(source, buffer, 1, 0, 0, 0, 0, geometry, True) == 0
    assert geometry.tolist() == [0, 0, height, width]
    assert np.array_equal(region_of(buffer, geometry), _full_frame(source, height, width, 1))


def test_bad_input_gives_an_error_code_and_a_black_crop_inside_the_buffer():
    height, width = 64, 48
    source = _jpeg(height, width)
    geometry = np.zeros(4, dtype=np.int64)
    sentinel = 77

    def call(data, capacity, *crop):
        buffer = np.full(height * width * 3 + 64, sentinel, dtype=np.uint8)
        code = decode_region(data, buffer[:capacity], 1, *crop, geometry)
        assert (buffer[capacity:] == sentinel).all()  # nothing written past capacity
        return code, buffer[:capacity]

    code, buffer = call(np.frombuffer(b'not a jpeg at all' * 8, np.uint8), 9216, 2, 3, 4, 5)
    assert code == -1 and geometry.tolist() == [2, 3, 4, 5]
    assert (region_of(buffer, geometry) == 0).all()
    code, _ = call(source, 9216, 60, 0, 10, 10)  # rows 60-69 of a 64-row frame
    assert code == -2 and geometry.tolist() == [60, 0, 10, 10]
    code, _ = call(source, 100, 0, 0, 40, 40)  # the region needs more than 100 bytes
    assert code == -3 and geometry.tolist() == [0, 0, 0, 0]
    # after the errors the thread's decompressor still works
    code, buffer = call(source, height * width * 3, 0, 0, height, width)
    assert code == 0
    assert np.array_equal(region_of(buffer, geometry), _full_frame(source, height, width, 1))
