"""Decoding only the rows and columns of a JPEG that a crop covers.

A random-resized crop covers on average about half of the stored image; decoding
the whole frame and throwing the rest away is most of a loader's work. The C
function ``decode_region`` (``jpeg_region.c``, libjpeg's ``jpeg_skip_scanlines`` and
``jpeg_crop_scanline``) stops after the crop's last row and skips the IDCT and colour
conversion outside it; the crop's pixels equal those of a full decode by ffcv's
``imdecode`` at the same scale (same DCT method, fancy upsampling, one iMCU of margin
around the crop). Measured against the full-frame ceiling in BENCHMARKS.md.

:func:`decode_region` is plain Python, callable as is, and compiles with numba: each
user compiles its own copy (``njit(decode_region)``, the decoder's inlined), as ffcv
does with ``imdecode``, since one dispatcher shared by pipelines that compile in their
own threads fails.
"""
from __future__ import annotations

import ctypes
import io

import numpy as np
from numba import njit

try:
    from . import _jpeg_region  # the compiled jpeg_region.c; loaded here for ctypes
except ImportError as error:  # a source tree used without building it
    raise ImportError(f"ffcv_imagenet's C extension is not built ({error}): run `pip "
                      "install -e .` in the checkout (needs libjpeg-dev and a C "
                      "compiler), or install the wheel") from error

_c_decode_region = ctypes.CDLL(_jpeg_region.__file__).decode_region
_c_decode_region.argtypes = ([ctypes.c_void_p, ctypes.c_uint64, ctypes.c_void_p,
                              ctypes.c_uint64] + [ctypes.c_int64] * 5
                             + [ctypes.c_void_p, ctypes.c_int64])
_c_decode_region.restype = ctypes.c_int


def decode_region(source, destination, denom, top, left, crop_h, crop_w, geometry,
                  full=False):
    """Decodes the JPEG bytes ``source`` ((n,) uint8) at scale 1/``denom`` (1, 2, 4
    or 8), only the part covering the crop of ``crop_h`` x ``crop_w`` pixels at
    (``top``, ``left``), in pixels of the frame decoded at that scale (``full``: the
    whole frame).

    Writes a region of that frame that contains the crop into ``destination`` ((m,)
    uint8, RGB, row after row) and its place into ``geometry`` ((4,) int64: first row,
    first column, rows, columns), so that the crop is
    ``destination[:rows * columns * 3].reshape(rows, columns, 3)[top - first_row:,
    left - first_column:]``. Returns 0; on an undecodable JPEG, a crop outside the
    frame or a region larger than ``destination``, a negative code, and the region
    is the crop itself, black.
    """
    return _c_decode_region(source.ctypes.data, source.size, destination.ctypes.data,
                            destination.size, denom, top, left, crop_h, crop_w,
                            geometry.ctypes.data, full)


def _check_linked_libjpeg() -> None:
    """Decodes a small JPEG once: a libjpeg of another ABI bound to the extension
    would fail every image (black crops) instead of this import."""
    from PIL import Image
    encoded = io.BytesIO()
    Image.new('RGB', (24, 16), (200, 40, 90)).save(encoded, format='JPEG', quality=95)
    source = np.frombuffer(encoded.getvalue(), dtype=np.uint8)
    pixels, geometry = np.zeros(24 * 16 * 3, dtype=np.uint8), np.zeros(4, dtype=np.int64)
    code = decode_region(source, pixels, 1, 0, 0, 16, 24, geometry)
    if code != 0 or geometry.tolist() != [0, 0, 16, 24] or abs(int(pixels[0]) - 200) > 8:
        raise ImportError(f"ffcv_imagenet's C extension ({_jpeg_region.__file__}) cannot "
                          f"decode a JPEG with the libjpeg it is linked to (code {code})")


_check_linked_libjpeg()


@njit(nogil=True, inline='always')
def region_of(destination: np.ndarray, geometry: np.ndarray) -> np.ndarray:
    """The decoded region as a (rows, columns, 3) uint8 view of ``destination``
    (callable from Python and from numba code)."""
    rows, columns = geometry[2], geometry[3]
    return destination[:rows * columns * 3].reshape(rows, columns, 3)
