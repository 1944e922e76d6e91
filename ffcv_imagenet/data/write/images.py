"""Reading one image file as RGB pixels, whatever its format, or saying why not.

Odd but valid files (grayscale, CMYK, palette, alpha, 16-bit, EXIF-rotated, a PNG
named .JPEG) become RGB; unreadable, truncated or non-image files raise
:class:`ImageError` with the reason. Whatever Pillow or a codec raises counts as
unreadable (Pillow's plugins raise NotImplementedError, struct.error, ... on odd
files), except MemoryError, which is left to the caller: running out of memory says
as much about the process's limits as about the file. A declared size over twice
Pillow's ``Image.MAX_IMAGE_PIXELS`` (about 179 million pixels by default) is refused
when the header is read, before any pixel memory is allocated.

Nothing here guards against a decoder that hangs, crashes or prints to file
descriptor 2; :mod:`.sandbox` does, around these functions.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps

_WIDE_GRAY_MODES = ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F')


class ImageError(ValueError):
    """A file that cannot be read as an image; the message is the reason."""


def _reason(err: Exception) -> str:
    """``Type: message`` on one line (some plugins put line breaks in messages)."""
    return ' '.join(f"{type(err).__name__}: {err}".split())


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in _WIDE_GRAY_MODES:
        # 16-bit and float grayscale: PIL's convert('RGB') clips at 255, which turns
        # most of a 16-bit image white, so rescale to 8 bits first.
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if values.max() > 255 else 255.0
        img = Image.fromarray(np.clip(values * (255.0 / top), 0, 255).astype(np.uint8))
    if img.mode == 'P' or img.mode.endswith('A') or img.mode == 'PA':
        # Transparent pixels are shown on white, as a browser would show them.
        rgba = img.convert('RGBA')
        white = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert('RGB')


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Pixels of ``path`` as a (height, width, 3) uint8 RGB array, upright per EXIF.

    Raises:
        ImageError: the file is missing, truncated, empty, not an image, or one that
            Pillow cannot decode (any exception but MemoryError).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # PIL's palette-transparency chatter
            with Image.open(path) as img:
                img = ImageOps.exif_transpose(img)
                rgb = _to_rgb(img)
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - see the module docstring
        raise ImageError(_reason(err)) from None
    array = np.asarray(rgb, dtype=np.uint8)
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"empty image of shape {array.shape}")
    return array


def check_image(path: str) -> str | None:
    """Why ``path`` cannot be read as an image, or None when it can.

    Cheaper than :func:`load_rgb` for JPEGs: every byte is still entropy-decoded
    (which is what catches truncation), but at 1/8 scale. MemoryError propagates.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            with Image.open(path) as img:
                if img.format == 'JPEG':
                    img.draft('RGB', (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
                if img.width == 0 or img.height == 0:
                    return "empty image"
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - see the module docstring
        return _reason(err)
    return None
