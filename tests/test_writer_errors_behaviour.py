"""The converter's reports and error paths, checked exactly: the summary line, thin
images that are still images, and the reasons given for files that fail."""
import os

import numpy as np
import pytest
from PIL import Image

from ffcv_imagenet.data.write import writer
from ffcv_imagenet.data.folders import DatasetError
from ffcv_imagenet.data.write.images import check_image, load_rgb
from ffcv_imagenet.data.write.writer import WriteReport, write_beton


def test_the_summary_line_counts_sizes_and_points_at_the_skipped_list(tmp_path):
    out = tmp_path / 'train.beton'
    report = WriteReport(out, written=3, skipped=[('a.JPEG', 'truncated')], seconds=1.5,
                         bytes=3 * 2 ** 20)
    assert report.summary() == (f"wrote 3 images, 1 skipped (see {out}.skipped.txt), in "
                                f"1.5 s, 3.0 MiB -> {out}")
    clean = WriteReport(out, written=2, seconds=0.25, bytes=2 ** 19)
    assert clean.summary() == f"wrote 2 images, 0 skipped, in 0.2 s, 0.5 MiB -> {out}"


@pytest.mark.parametrize('shape', [(7, 1, 3), (1, 7, 3), (1, 1, 3)])
@pytest.mark.parametrize('fmt', ['JPEG', 'PNG'])
def test_images_one_pixel_thin_are_images(tmp_path, shape, fmt):
    path = tmp_path / f'thin.{fmt.lower()}'
    Image.fromarray(np.full(shape, 200, np.uint8)).save(path, fmt)
    assert check_image(str(path)) is None
    assert load_rgb(path).shape == shape


# --- pixel values of the odd modes ---------------------------------------------------

def saved(tmp_path, array, name, mode=None):
    path = tmp_path / name
    Image.fromarray(array, mode).save(path)
    return path


def test_sixteen_bit_gray_is_scaled_from_its_full_range(tmp_path):
    values = np.array([[0, 100, 255, 256, 32768, 65535]], np.uint16)
    pixels = load_rgb(saved(tmp_path, values, 'wide.png'))
    assert pixels[0, :, 0].tolist() == [0, 0, 0, 0, 127, 255]  # floor(v * 255 / 65535)
    assert (pixels == pixels[..., :1]).all()  # gray stays gray


@pytest.mark.parametrize('values, expected', [
    ([0, 100, 200, 255], [0, 100, 200, 255]),  # a 16-bit file holding 8-bit values
    ([0, 256], [0, 0]),                        # anything above 255 is 16-bit
])
def test_sixteen_bit_files_with_small_values_keep_them(tmp_path, values, expected):
    pixels = load_rgb(saved(tmp_path, np.array([values], np.uint16), 'small.png'))
    assert pixels[0, :, 0].tolist() == expected


def test_float_and_32_bit_gray_are_clipped_to_the_pixel_range(tmp_path):
    floats = np.array([[-50.0, 0.0, 100.0, 255.0]], np.float32)
    assert load_rgb(saved(tmp_path, floats, 'f.tiff'))[0, :, 0].tolist() == [0, 0, 100, 255]
    ints = np.array([[-5, 0, 65535, 100000]], np.int32)
    assert load_rgb(saved(tmp_path, ints, 'i.tiff'))[0, :, 0].tolist() == [0, 0, 255, 255]


TRANSPARENT_OPAQUE_HALF = np.array([[[0, 0, 0, 0], [0, 0, 0, 255], [0, 0, 0, 128]]],
                                   np.uint8)
ON_WHITE = [[255, 255, 255], [0, 0, 0], [127, 127, 127]]


def test_transparent_pixels_are_shown_on_white(tmp_path):
    rgba = saved(tmp_path, TRANSPARENT_OPAQUE_HALF, 'rgba.png', 'RGBA')
    assert load_rgb(rgba)[0].tolist() == ON_WHITE
    gray_alpha = saved(tmp_path, TRANSPARENT_OPAQUE_HALF[..., [0, 3]].copy(), 'la.png', 'LA')
    assert load_rgb(gray_alpha)[0].tolist() == ON_WHITE


def test_a_palette_images_transparent_colour_is_white(tmp_path):
    palette = Image.new('P', (3, 1))
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette.putdata([0, 1, 0])
    path = tmp_path / 'palette.png'
    palette.save(path, transparency=0)
    assert load_rgb(path)[0].tolist() == [[255, 255, 255], [10, 20, 30], [255, 255, 255]]


# --- what the converter stores and what it skips ------------------------------------

def photos(folder, count=4, shape=(40, 60, 3)):
    """(samples, classes): ``count`` noisy JPEGs of ``shape`` in two classes."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(count):
        path = folder / f'{i}.JPEG'
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path, quality=95)
        samples.append((str(path), i % 2))
    return samples, ['a', 'b']


def stored(beton):
    """[(mode, height, width)] of the images in ``beton`` (mode 0: JPEG, 1: raw)."""
    from ffcv.reader import Reader
    reader = Reader(str(beton))
    images = reader.metadata[f"f{reader.field_names.index('image')}"]
    return [(int(i['mode']), int(i['height']), int(i['width'])) for i in images]


def write(tmp_path, name, **kwargs):
    samples, classes = photos(tmp_path)
    out = tmp_path / name
    write_beton(samples, out, classes, num_workers=1, **kwargs)
    return stored(out)


def test_images_are_resized_to_the_longest_side_and_stored_as_asked(tmp_path):
    assert write(tmp_path, 'small.beton', max_resolution=30) == [(0, 20, 30)] * 4
    assert write(tmp_path, 'full.beton', max_resolution=0) == [(0, 40, 60)] * 4
    assert write(tmp_path, 'raw.beton', write_mode='raw') == [(1, 40, 60)] * 4


@pytest.mark.parametrize('kwargs, mode', [
    (dict(write_mode='proportion', compress_probability=0.0), 1),
    (dict(write_mode='proportion', compress_probability=1.0), 0),
    (dict(write_mode='smart', smart_threshold=10 ** 9), 1),  # small enough to keep raw
    (dict(write_mode='smart', smart_threshold=1), 0),
])
def test_the_proportion_and_smart_modes_follow_their_setting(tmp_path, kwargs, mode):
    assert [m for m, _, _ in write(tmp_path, 'x.beton', **kwargs)] == [mode] * 4


def test_an_unknown_write_mode_is_one_clear_error(tmp_path):
    samples, classes = photos(tmp_path, count=1)
    with pytest.raises(DatasetError) as err:
        write_beton(samples, tmp_path / 'x.beton', classes, write_mode='png')
    assert str(err.value) == ("cfg.write_mode must be one of ('raw', 'jpg', 'proportion', "
                              "'smart'), got 'png'")
    assert list(tmp_path.glob('x.beton*')) == []


def test_a_readable_file_whose_decoder_prints_is_kept(tmp_path, monkeypatch):
    """What a codec prints to stderr is no reason by itself; for a file that fails, it
    is added to the reason."""
    samples, _ = photos(tmp_path, count=2)
    broken = tmp_path / 'broken.JPEG'
    broken.write_bytes(b'not an image')
    real = writer.check_image

    def chatty(path):
        os.write(2, b'libfoo: warning, something odd\n')
        return real(path)
    monkeypatch.setattr(writer, 'check_image', chatty)
    paths = [path for path, _ in samples] + [str(broken)]
    [(path, reason)] = writer.find_bad_files(paths, num_workers=1)
    assert path == str(broken)
    assert reason.endswith('[stderr: libfoo: warning, something odd]')
