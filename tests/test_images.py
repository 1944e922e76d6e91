import io
import time

import numpy as np
import pytest
from PIL import Image

from ffcv_imagenet.data.write.images import ImageError, check_image, load_rgb

GRADIENT = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (30, 1))  # 30 x 40


def _save(path, image, fmt, **kwargs):
    image.save(path, format=fmt, **kwargs)
    return path


def odd_images(folder):
    """Valid files that a naive loader gets wrong; name -> (path, expected (h, w))."""
    rgb = Image.fromarray(np.stack([GRADIENT] * 3, -1))
    palette = rgb.convert('P', palette=Image.Palette.ADAPTIVE)
    palette.info['transparency'] = 0
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    sixteen = Image.fromarray(GRADIENT.astype(np.uint16) * 257)
    return {
        'gray': (_save(folder / 'gray.JPEG', Image.fromarray(GRADIENT), 'JPEG'), (30, 40)),
        'cmyk': (_save(folder / 'cmyk.JPEG', rgb.convert('CMYK'), 'JPEG'), (30, 40)),
        'palette': (_save(folder / 'palette.png', palette, 'PNG'), (30, 40)),
        'alpha': (_save(folder / 'alpha.png', rgb.convert('RGBA'), 'PNG'), (30, 40)),
        'gray_alpha': (_save(folder / 'la.png', Image.fromarray(GRADIENT).convert('LA'),
                             'PNG'), (30, 40)),
        'sixteen_bit': (_save(folder / 'sixteen.png', sixteen, 'PNG'), (30, 40)),
        'exif_rotated': (_save(folder / 'rotated.JPEG', rgb, 'JPEG', exif=exif), (40, 30)),
        'png_named_jpeg': (_save(folder / 'png.JPEG', rgb, 'PNG'), (30, 40)),
    }


def bad_files(folder):
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        good, 'JPEG')
    files = {'truncated': good.getvalue()[: len(good.getvalue()) // 2],
             'text': b'this is not an image\n', 'empty': b''}
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.JPEG"
        paths[name].write_bytes(data)
    return paths


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
    from odd_files import dds_dx10
    path = tmp_path / 'texture.JPEG'
    path.write_bytes(dds_dx10(93))
    assert check_image(str(path)) == 'NotImplementedError: Unimplemented DXGI format 93'
    with pytest.raises(ImageError, match='^NotImplementedError: Unimplemented DXGI'):
        load_rgb(path)


def test_a_huge_declared_size_is_refused_from_the_header(tmp_path):
    """100000 x 100000 pixels: refused before any pixel memory exists, so even under a
    64 MiB memory limit the reason is the size, not a MemoryError, and it is quick."""
    from odd_files import png_declaring
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
