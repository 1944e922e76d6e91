"""Area resize of an image crop, with flip and normalisation in the same pass (numba).

OpenCV's ``INTER_AREA`` (which ffcv's ``resize_crop`` calls) takes its generic,
table-driven path whenever the scale is not an integer, which is nearly always for a
random-resized crop; on the project's CPU machine that path cost more per image than
decoding the JPEG (BENCHMARKS.md, issue 14.2). The same filter is computed here as two
separable passes that LLVM can vectorise:

* vertical: each output row is a weighted sum of the 2-3 source rows under it, over the
  whole crop width (contiguous, SIMD);
* horizontal: each output pixel is a weighted sum of the 2-3 row pixels under it,
  written to its flipped place when flipping, rounded to a whole grey level, then
  ``level * mul + add`` per channel (float output: normalisation); for 2-3 taps two
  output pixels at a time, in vector code written for LLVM directly.

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

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload
from ffcv.pipeline.compiler import Compiler

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
    # 2-3 taps also take the vector loop's copy: 4 lanes per tap, in pairs of columns.
    # The weights follow the row, so the vector loop's read of one float past the row
    # stays inside the scratch.
    return max_width * 3 + out_w * max(taps_per_column, 15) + 24, 2 * out_w + 2


def resize_kernel():
    """A numba dispatcher of :func:`resize_crop_area` for one decoder pipeline (its own,
    so that no two epoch threads type the same one), whose machine code numba keeps on
    disk: compiled once per machine and Python, then loaded in well under a second
    instead of compiled for 2-3 s in every process's first epoch. Where no cache folder
    is writable it compiles in each process; with ffcv's compilation switched off
    (``Compiler.set_enabled(False)``, for debugging) it is plain Python."""
    if not Compiler.is_enabled:
        return resize_crop_area.py_func
    try:
        return njit(fastmath=True, nogil=True, cache=True)(resize_crop_area.py_func)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return njit(fastmath=True, nogil=True)(resize_crop_area.py_func)


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
    if kx == 2 or kx == 3:
        pair_columns, pair_weights = _vector_layout(columns, weights, kx, out_w, flip,
                                                    scratch[n + out_w * kx:])
    out_flat = out.reshape(-1)
    # (the loop for 4 or more taps) the levels themselves (uint8 output, or float
    # output left unnormalised) take a cheaper rounding than normalised levels
    plain = _holds_levels(out) or (mul[0] == 1 and mul[1] == 1 and mul[2] == 1
                                   and add[0] == 0 and add[1] == 0 and add[2] == 0)
    for y in range(out_h):
        first, count = _taps(y, sy, crop_h)
        base = _U((top + first) * stride + left * 3)
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
        if kx == 2:
            _vector_columns(row, pair_columns, pair_weights, 2, line, out_w, mul, add)
        elif kx == 3:
            _vector_columns(row, pair_columns, pair_weights, 3, line, out_w, mul, add)
        else:
            _columns(row, columns, weights, kx, line, out_w, flip, plain, mul, add)


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


@njit(fastmath=True, nogil=True, inline='always')
def _vector_layout(columns, weights, kx, out_w, flip, free):
    """The taps of :func:`_vector_columns`: per output pixel in the order it is
    written (mirrored when ``flip``; a last, odd pixel padded with a copy), its first
    source offset, and per pair of pixels and tap 8 weights (4 lanes for each pixel),
    taken from ``columns`` and ``weights`` (``kx`` per column) and stored in the
    second half of ``columns`` and in ``free``."""
    pairs = (out_w + 1) // 2
    pair_columns = columns[out_w:out_w + 2 * pairs]
    pair_weights = free[:pairs * kx * 8]
    for d in range(2 * pairs):
        x = min(d, out_w - 1)
        if flip:
            x = out_w - 1 - x
        pair_columns[d] = columns[x]
        for t in range(kx):
            at = ((d // 2) * kx + t) * 8 + (d % 2) * 4
            for lane in range(4):
                pair_weights[at + lane] = weights[x * kx + t]
    return pair_columns, pair_weights


@njit(fastmath=True, nogil=True, inline='always')
def _vector_columns(row, pair_columns, pair_weights, kx, line, out_w, mul, add):
    """The horizontal pass of one row for ``kx`` = 2 or 3 taps, two output pixels per
    vector operation (:func:`_vector_layout` holds their taps), written left to
    right."""
    m0, m1, m2 = np.float32(mul[0]), np.float32(mul[1]), np.float32(mul[2])
    a0, a1, a2 = np.float32(add[0]), np.float32(add[1]), np.float32(add[2])
    for pair in range((out_w + 1) // 2):
        d = 2 * pair
        # an 8-lane store also writes 2 values of the next pixels, which they then
        # overwrite; at the row's end only the values of the row are stored
        left = 3 * (out_w - d)
        count = 8 if left >= 8 else left
        # (one call per tap count: an intrinsic's code is chosen when numba compiles)
        if kx == 2:
            _pair2(line, _U(3 * d), row, pair_columns[d], pair_columns[d + 1], pair_weights,
                   _U(8 * kx * pair), m0, m1, m2, a0, a1, a2, count)
        else:
            _pair3(line, _U(3 * d), row, pair_columns[d], pair_columns[d + 1], pair_weights,
                   _U(8 * kx * pair), m0, m1, m2, a0, a1, a2, count)


_I32, _I64, _F32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
_V4F, _V8F, _V8I = ir.VectorType(_F32, 4), ir.VectorType(_F32, 8), ir.VectorType(_I32, 8)


def _pair_intrinsic(kx: int):
    """A numba intrinsic storing two output pixels of the horizontal pass with ``kx``
    taps into ``line[d:d + 6]`` (8 lanes when ``count`` is 8, else the first
    ``count``): for each, the level (uint8 ``line``) or level * (m0, m1, m2) + (a0,
    a1, a2) (float32), level = the taps' weighted sum of the RGB triples
    ``row[b + 3t:b + 3t + 3]`` (``b`` = ``b0``, ``b1``), rounded to a whole grey level;
    tap ``t``'s weights are the 8 floats ``weights[i + 8t:]``, 4 per pixel.

    Written as LLVM vector code because numba leaves LLVM's SLP vectoriser off, so
    the same loop in numba computes the channels one at a time: 1.5-1.7x slower per
    resize (BENCHMARKS.md, issue 14.2). Each tap loads 4 floats per pixel, its triple
    and the next pixel's first channel, which is dropped: past the row's last pixel
    that is the first of the weights, which follow the row in the scratch memory.
    The level is ``sum + 1/2`` truncated: the sums are never negative, so truncating
    rounds them."""

    @intrinsic
    def pair(typingctx, line, d, row, b0, b1, weights, i, m0, m1, m2, a0, a1, a2, count):
        # the code below is for these types only: others get numba's typing error
        if not (isinstance(line, types.Array) and line.dtype in (types.uint8, types.float32)
                and all(isinstance(a, types.Array) and a.dtype == types.float32
                        for a in (row, weights))
                and all(isinstance(v, types.Integer) for v in (d, b0, b1, i))
                and all(v == types.float32 for v in (m0, m1, m2, a0, a1, a2))
                and isinstance(count, types.Integer) and count.signed):
            return None
        sig = types.void(line, d, row, b0, b1, weights, i, m0, m1, m2, a0, a1, a2, count)

        def codegen(context, builder, signature, args):
            line_v, d_v, row_v, b0_v, b1_v, weights_v, i_v, *ma, count_v = args

            def data(ty, value):
                return context.make_array(ty)(context, builder, value).data

            def load(pointer, index, vector_type):
                at = builder.gep(pointer, [builder.add(index[0], ir.Constant(_I64, index[1]))])
                return builder.load(builder.bitcast(at, vector_type.as_pointer()), align=4)

            def lanes(values):
                vector = ir.Constant(_V8F, [0.0] * 8)
                for lane, value in enumerate(values):
                    vector = builder.insert_element(vector, value, ir.Constant(_I32, lane))
                return vector

            row_p, weights_p = data(row, row_v), data(weights, weights_v)
            fast = ('fast',)
            both = ir.Constant(_V8I, list(range(8)))
            total = None
            for t in range(kx):
                taps = builder.shuffle_vector(load(row_p, (b0_v, 3 * t), _V4F),
                                              load(row_p, (b1_v, 3 * t), _V4F), both)
                term = builder.fmul(taps, load(weights_p, (i_v, 8 * t), _V8F), flags=fast)
                total = term if total is None else builder.fadd(total, term, flags=fast)
            half = lanes([ir.Constant(_F32, 0.5)] * 8)
            level = builder.fptosi(builder.fadd(total, half), _V8I)
            # the two triples side by side, the 4th lanes dropped, zeros after them
            level = builder.shuffle_vector(level, ir.Constant(_V8I, [0] * 8),
                                           ir.Constant(_V8I, [0, 1, 2, 4, 5, 6, 8, 8]))
            if line.dtype == types.uint8:
                value = builder.trunc(level, ir.VectorType(ir.IntType(8), 8))
            else:
                value = builder.fadd(builder.fmul(builder.sitofp(level, _V8F),
                                                  lanes(ma[:3] * 2), flags=fast),
                                     lanes(ma[3:] * 2), flags=fast)
            out = builder.gep(data(line, line_v), [d_v])
            count = builder.sext(count_v, _I64) if count_v.type.width < 64 else count_v
            is_wide = builder.icmp_signed('==', count, ir.Constant(count.type, 8))
            with builder.if_else(is_wide) as (wide, narrow):
                with wide:
                    builder.store(value, builder.bitcast(out, value.type.as_pointer()), align=1)
                with narrow:
                    for lane in range(6):
                        inside = builder.icmp_signed('>', count, ir.Constant(count.type, lane))
                        with builder.if_then(inside):
                            builder.store(builder.extract_element(value, ir.Constant(_I32, lane)),
                                          builder.gep(out, [ir.Constant(_I64, lane)]))
            return context.get_dummy_value()

        return sig, codegen

    return pair


_pair2, _pair3 = _pair_intrinsic(2), _pair_intrinsic(3)
