"""Reading one image file for the converter (data/write/images.py): odd but valid
files become RGB pixels (modes, 16-bit and float values, transparency, thin images),
bad ones give a reason, and a huge declared size is refused from the header."""
import time

import numpy as np
import pytest
from PIL import Image

from ffcv_imagenet.data.write.images import ImageError, check_image, load_rgb
from tests.support import bad_files, odd_images


@pytest.mark.parametrize('name', ['gray', 'cmyk', 'palette', 'alpha', 'gray_alpha',
                                  'sixteen_bit', 'exif_rotated', 'png_named_jpeg'])
def test_odd_images_become_rgb(tmp_path, name):
    path, shape = odd_images(tmp_path)[name]
    assert check_image(str(path)) is None
    pixels = load_rgb(path)
    assert pixels.dtype == np.uint8 and pixels.shape == shape + (3,)
    # The left-to-right gradient survives (a 16-bit image clipped at 255 would be flat).
    if name != 'exif_rotated':
        assert pixels[:, :5].mean() < 60 and pixels[:, -5:].mean() > 190


@pytest.mark.parametrize('name', ['truncated', 'text', 'empty'])
def test_bad_files_are_reported(tmp_path, name):
    path = bad_files(tmp_path)[name]
    assert check_image(str(path))
    with pytest.raises(ImageError):
        load_rgb(path)


def test_missing_file_is_reported(tmp_path):
    assert 'No such file' in check_image(str(tmp_path / 'gone.JPEG'))


def test_any_exception_of_a_plugin_is_a_reason(tmp_path):
    """Pillow's DDS plugin raises NotImplementedError for DXGI format 93 (what crashed
    the checking pool of a real conversion)."""
    from tests.support import dds_dx10
    path = tmp_path / 'texture.JPEG'
    path.write_bytes(dds_dx10(93))
    assert check_image(str(path)) == 'NotImplementedError: Unimplemented DXGI format 93'
    with pytest.raises(ImageError, match='^NotImplementedError: Unimplemented DXGI'):
        load_rgb(path)


def test_a_huge_declared_size_is_refused_from_the_header(tmp_path):
    """100000 x 100000 pixels: refused before any pixel memory exists, so even under a
    64 MiB memory limit the reason is the size, not a MemoryError, and it is quick."""
    from tests.support import png_declaring
    from ffcv_imagenet.data.write.sandbox import Limits, run_each
    path = tmp_path / 'bomb.JPEG'
    path.write_bytes(png_declaring(100_000, 100_000))
    start = time.monotonic()
    [(_, outcome)] = run_each(check_image, [str(path)], Limits(seconds=10, memory_mb=64), 1)
    assert outcome.error is None and outcome.value.startswith('DecompressionBombError')
    assert time.monotonic() - start < 5
    with pytest.raises(ImageError, match='DecompressionBombError'):
        load_rgb(path)


def test_memory_error_is_left_to_the_caller(tmp_path, monkeypatch):
    """The sandbox turns it into a reason that names the memory limit."""
    path = bad_files(tmp_path)['text']

    def no_memory(*args, **kwargs):
        raise MemoryError
    monkeypatch.setattr(Image, 'open', no_memory)
    with pytest.raises(MemoryError):
        check_image(str(path))
    with pytest.raises(MemoryError):
        load_rgb(path)


# --- thin images and the pixel values of the odd modes -----------------------------------

@pytest.mark.parametrize('shape', [(7, 1, 3), (1, 7, 3), (1, 1, 3)])
@pytest.mark.parametrize('fmt', ['JPEG', 'PNG'])
def test_images_one_pixel_thin_are_images(tmp_path, shape, fmt):
    path = tmp_path / f'thin.{fmt.lower()}'
    Image.fromarray(np.full(shape, 200, np.uint8)).save(path, fmt)
    assert check_image(str(path)) is None
    assert load_rgb(path).shape == shape


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
