"""Area resize of an image crop, with flip and normalisation in the same pass (numba).

OpenCV's ``INTER_AREA`` (which ffcv's ``resize_crop`` calls) takes its generic,
table-driven path whenever the scale is not an integer, which is nearly always for a
random-resized crop; on the project's CPU machine that path cost more per image than
decoding the JPEG (BENCHMARKS.md, "CPU loader"). The same filter is computed here as two
separable passes that LLVM can vectorise:

* vertical: each output row is a weighted sum of the 2-3 source rows under it, over the
  whole crop width (contiguous, SIMD);
* horizontal: each output pixel is a weighted sum of the 2-3 row pixels under it,
  written to its flipped place when flipping, rounded to a whole grey level, then
  ``level * mul + add`` per channel (float output: normalisation); for 2-3 taps 2-5
  output pixels at a time, in vector code written for LLVM (:mod:`.resize_vector`).

The filter is a box: output pixel ``i`` of an axis covers source ``[i * s, (i + 1) * s)``
of the crop (``s`` = crop / output length) and each source pixel weighs by its overlap.
That is ``INTER_AREA``'s filter: when shrinking, uint8 results equal OpenCV's but for
float rounding (at most one grey level, in under 1% of the pixels in the tests), and
enlarging, OpenCV's linear-like weights, within one grey level. Where one axis shrinks
and the other enlarges, OpenCV gives both axes its enlarging weights; here the shrinking
axis keeps its box (no aliasing), so such crops differ from OpenCV's by a few grey levels.
Float output is the rounded levels normalised, as uint8 output normalised later is.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from numba import njit, types
from numba.extending import overload
from ffcv.pipeline.compiler import Compiler

from . import resize_vector
from .resize_vector import (WIDE_PERMUTE, block_layout, block_pass, pair_layout,
                            pair_pass)

# every index below is unsigned, so numba emits no negative-index wraparound checks
# (with them, the row loop does not vectorise and runs ~15x slower)
_U = np.uint64
# The helpers are inlined into resize_crop_area, and each decoder pipeline calls a numba
# dispatcher of that of its own (resize_kernel): shared dispatchers, called from ffcv's
# epoch threads, failed with a KeyError from numba's table of compiled signatures when
# the loader tests ran one after another (numba 0.68.1), and inlining the whole resize
# into the decoder's parallel loop added seconds to compilation.


@njit(fastmath=True, nogil=True, inline='always')
def _taps(i, s, src_n):
    """First source pixel and tap count of output pixel ``i`` (box ``[i*s, (i+1)*s)``)."""
    lo = i * s
    first = min(int(lo), src_n - 1)
    last = min(int(np.ceil(lo + s)), src_n)  # exclusive
    return first, max(1, last - first)


@njit(fastmath=True, nogil=True, inline='always')
def _level(value):
    """``value`` rounded to a whole grey level, so that float output is the uint8
    output normalised: a GPU (uint8, normalised on the device) and the CPU (float32)
    train on the same pixels."""
    return np.floor(value + np.float32(0.5))


@njit(fastmath=True, nogil=True, inline='always')
def _weight(j, i, s):
    """Share of source pixel ``j`` in output pixel ``i`` (0 outside its box)."""
    lo = i * s
    return max(0.0, min(lo + s, j + 1.0) - max(lo, float(j))) / s


def scratch_sizes(max_height: int, max_width: int, out_h: int, out_w: int
                  ) -> tuple[int, int]:
    """(float32, uint64) scratch lengths :func:`resize_crop_area` needs for crops of
    images up to ``max_height`` x ``max_width`` pixels resized to ``out_h`` x ``out_w``."""
    del max_height, out_h  # the vertical taps are computed row by row
    taps_per_column = max_width // max(out_w, 1) + 3
    # 2-3 taps also take a vector loop's layout: 3 x 16 weights and 16 byte indices
    # per block of 4-5 pixels, or 3 x 8 weights per pair. The layout follows the row,
    # so that the vector loops' reads past the row's end (under 32 floats) stay inside
    # the scratch.
    return max_width * 3 + out_w * max(taps_per_column, 16) + 48, 2 * out_w + 2


def resize_kernel():
    """A numba dispatcher of :func:`resize_crop_area` for one decoder pipeline (its own,
    so that no two epoch threads type the same one), whose machine code numba keeps on
    disk: compiled once per machine and Python, then loaded in well under a second
    instead of compiled for 2-3 s in every process's first epoch. Where no cache folder
    is writable it compiles in each process; with ffcv's compilation switched off
    (``Compiler.set_enabled(False)``, for debugging) it is plain Python."""
    if not Compiler.is_enabled:
        return resize_crop_area.py_func
    kernel = _kernel_keyed_to(_VECTOR_CODE)
    try:
        return njit(fastmath=True, nogil=True, cache=True)(kernel)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return njit(fastmath=True, nogil=True)(kernel)


# numba's cache is valid while this file is unchanged, and keys on the bytecode and the
# closure of the function it caches; the vector code it inlines lives in another file,
# whose hash is therefore put in the cached function's closure
_VECTOR_CODE = hashlib.sha256(Path(resize_vector.__file__).read_bytes()).hexdigest()


def _kernel_keyed_to(vector_code: str):
    """:func:`resize_crop_area` as a function whose closure holds ``vector_code``."""
    def kernel(image, top, left, crop_h, crop_w, out, flip, mul, add, scratch, columns):
        vector_code  # noqa: B018 (in the closure: part of numba's cache key)
        resize_crop_area(image, top, left, crop_h, crop_w, out, flip, mul, add,
                         scratch, columns)
    return kernel


@njit(fastmath=True, nogil=True, inline='always')
def resize_crop_area(image, top, left, crop_h, crop_w, out, flip, mul, add,
                     scratch, columns):
    """Resizes ``image[top:top+crop_h, left:left+crop_w]`` (uint8, (H, W, 3)) into
    ``out`` ((out_h, out_w, 3), uint8 or float32) with an area filter, mirrored left
    to right when ``flip``, each channel ``c`` stored as ``level * mul[c] + add[c]``
    (float32 output) or as ``level`` (uint8 output: ``mul`` and ``add`` are not
    applied), ``level`` the filtered value rounded to a whole grey level.

    ``scratch`` (float32) and ``columns`` (uint64) are working memory, at least
    :func:`scratch_sizes` long; their contents are overwritten.
    """
    out_h, out_w = out.shape[0], out.shape[1]
    # an empty crop (a centre crop of a 1-pixel side) is taken as one pixel
    crop_h, crop_w = max(1, crop_h), max(1, crop_w)
    stride = image.shape[1] * 3
    flat = image.reshape(-1)
    n = crop_w * 3
    row = scratch[:n]
    sx = crop_w / out_w
    sy = crop_h / out_h
    # horizontal taps of every output column: first source pixel (as a row offset) and
    # weights, padded to a fixed count per column
    kx = min(2, crop_w)  # the two-tap loop also serves one tap (zero-padded)
    for x in range(out_w):
        first, count = _taps(x, sx, crop_w)
        columns[x] = _U(first)
        kx = max(kx, count)
    weights = scratch[n:n + out_w * kx]
    for x in range(out_w):
        first = min(np.int64(columns[x]), crop_w - kx)  # padded taps stay inside
        columns[x] = _U(first * 3)
        for t in range(kx):
            weights[x * kx + t] = _weight(first + t, x, sx)
    # 2-3 taps take a vector loop: blocks of 5 (or 4) pixels where AVX-512 exists and
    # their taps fit its permutes, else pairs
    block_pixels = 0
    if kx == 2 or kx == 3:
        free = scratch[n + out_w * kx:]
        bases = columns[out_w:]
        if WIDE_PERMUTE and block_layout(columns, weights, kx, out_w, flip, bases, free, 5):
            block_pixels = 5
        elif WIDE_PERMUTE and block_layout(columns, weights, kx, out_w, flip, bases, free, 4):
            block_pixels = 4
        else:
            pair_columns, pair_weights = pair_layout(columns, weights, kx, out_w, flip, free)
    out_flat = out.reshape(-1)
    # (the loop for 4 or more taps) the levels themselves (uint8 output, or float
    # output left unnormalised) take a cheaper rounding than normalised levels
    plain = _holds_levels(out) or (mul[0] == 1 and mul[1] == 1 and mul[2] == 1
                                   and add[0] == 0 and add[1] == 0 and add[2] == 0)
    for y in range(out_h):
        first, count = _taps(y, sy, crop_h)
        base = _U((top + first) * stride + left * 3)
        # up to 3 source rows (shrinking by less than 2x: nearly every crop) in one pass
        if count <= 3:
            _vertical_taps(row, flat, base, _U(stride), n, first, count, y, sy)
        else:
            w = np.float32(_weight(first, y, sy))
            src = flat[base:base + _U(n)]
            for k in range(n):
                row[k] = w * src[k]
            for t in range(1, count):
                w = np.float32(_weight(first + t, y, sy))
                src = flat[base + _U(t * stride):base + _U(t * stride + n)]
                for k in range(n):
                    row[k] += w * src[k]
        line = out_flat[_U(y * out_w * 3):_U((y + 1) * out_w * 3)]
        # enlarging takes 2 taps and shrinking by less than 2x (nearly every crop, after
        # the decoder's DCT scaling) at most 3: those two get the vector loop
        if block_pixels != 0:
            block_pass(row, bases, free, kx, block_pixels, line, out_w, mul, add)
        elif kx == 2:
            pair_pass(row, pair_columns, pair_weights, 2, line, out_w, mul, add)
        elif kx == 3:
            pair_pass(row, pair_columns, pair_weights, 3, line, out_w, mul, add)
        else:
            _columns(row, columns, weights, kx, line, out_w, flip, plain, mul, add)


@njit(fastmath=True, nogil=True, inline='always')
def _vertical_taps(row, flat, base, stride, n, first, count, y, sy):
    """``row`` = output row ``y``'s ``count`` (1-3) vertical taps: source rows from
    ``first`` on, the first at ``flat[base:base + n]``, the next ``stride`` further
    each. One pass over the row, the taps summed in the order of the general loop."""
    w0 = np.float32(_weight(first, y, sy))
    s0 = flat[base:base + _U(n)]
    if count == 1:
        for k in range(n):
            row[k] = w0 * s0[k]
        return
    w1 = np.float32(_weight(first + 1, y, sy))
    s1 = flat[base + stride:base + stride + _U(n)]
    if count == 2:
        for k in range(n):
            row[k] = w0 * s0[k] + w1 * s1[k]
        return
    w2 = np.float32(_weight(first + 2, y, sy))
    s2 = flat[base + 2 * stride:base + 2 * stride + _U(n)]
    for k in range(n):
        row[k] = w0 * s0[k] + w1 * s1[k] + w2 * s2[k]


@njit(fastmath=True, nogil=True, inline='always')
def _columns(row, columns, weights, kx, line, out_w, flip, plain, mul, add):
    """The horizontal pass of one row: output pixel ``x`` is the ``kx`` taps of its
    weights over the row from pixel ``columns[x]`` on, stored at ``x`` (or mirrored)."""
    if plain:
        for x in range(out_w):
            v0, v1, v2 = _pixel(row, columns[x], weights, _U(kx * x), kx)
            d = _U(3 * (out_w - 1 - x if flip else x))
            # v >= 0, so truncating v + 1/2 (the cast) rounds it
            line[d] = np.uint8(v0 + np.float32(0.5))
            line[d + _U(1)] = np.uint8(v1 + np.float32(0.5))
            line[d + _U(2)] = np.uint8(v2 + np.float32(0.5))
    else:
        m0, m1, m2, a0, a1, a2 = mul[0], mul[1], mul[2], add[0], add[1], add[2]
        for x in range(out_w):
            v0, v1, v2 = _pixel(row, columns[x], weights, _U(kx * x), kx)
            d = _U(3 * (out_w - 1 - x if flip else x))
            line[d] = _level(v0) * m0 + a0
            line[d + _U(1)] = _level(v1) * m1 + a1
            line[d + _U(2)] = _level(v2) * m2 + a2


@njit(fastmath=True, nogil=True, inline='always')
def _pixel(row, b, weights, i, kx):
    """The three channels of one output pixel: ``kx`` taps from row offset ``b``,
    weights from ``weights[i]`` on."""
    w = weights[i]
    v0, v1, v2 = w * row[b], w * row[b + _U(1)], w * row[b + _U(2)]
    for t in range(1, kx):
        w, o = weights[i + _U(t)], b + _U(3 * t)
        v0 += w * row[o]
        v1 += w * row[o + _U(1)]
        v2 += w * row[o + _U(2)]
    return v0, v1, v2


def _holds_levels(out) -> bool:
    """Whether ``out`` stores the levels unnormalised (uint8 output)."""
    return out.dtype == np.uint8


@overload(_holds_levels, inline='always')
def _holds_levels_compiled(out):
    levels = out.dtype == types.uint8
    return lambda out: levels
