"""The 2- and 3-tap horizontal pass of :mod:`.resize` in vector code written for LLVM.

The area filter's horizontal pass takes 2-3 source pixels (taps) per output pixel, at
offsets that follow no fixed stride, over RGB triples. numba leaves LLVM's SLP
vectoriser off, so in plain numba the three channels of a pixel are computed one at a
time. Two kernels, both numba intrinsics built with llvmlite, compute many at once; the
pixels are those of the scalar loop (tests/test_resize.py):

* ``block``, on CPUs with AVX-512: 4 or 5 output pixels (12-15 values) per 16-lane
  operation. The values under one block of output pixels lie within 32 floats of the
  row, so each tap is one two-register permute (``vpermi2ps``) of those 32 floats with
  indices laid out once per image, then a multiply by the taps' weights.
* ``pair``, elsewhere: two output pixels per 8-lane operation, each tap loading 4
  floats per pixel. (It would also take blocks whose taps spread past 32 floats, but
  with 2-3 taps a block of 4 pixels always fits.)

Both lay out the taps once per image in the order the pixels are written (mirrored when
flipping), so the row loops have no flip logic, and round each value by truncating
``sum + 1/2`` (the sums are never negative).
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.codegen import get_host_cpu_features
from numba.extending import intrinsic

_U = np.uint64  # unsigned indices: no negative-index wraparound code in the loops


def has_wide_permute() -> bool:
    """Whether numba compiles for a CPU with AVX-512F (16-lane permutes of two
    registers), which the ``block`` kernel needs: the features numba itself compiles
    for, so ``NUMBA_CPU_FEATURES`` and ``NUMBA_ENABLE_AVX=0`` count."""
    features = numba.config.CPU_FEATURES
    if features is None:
        features = get_host_cpu_features()
    return '+avx512f' in features.split(',')


# read by the compiled resize as a constant: numba's on-disk cache keys on the CPU
WIDE_PERMUTE = has_wide_permute()
# a block's taps are permuted out of this many floats of the row (two 16-lane registers)
_SPAN = 32


@njit(fastmath=True, nogil=True, inline='always')
def block_layout(columns, weights, kx, out_w, flip, bases, free, pixels):
    """The taps of :func:`block_pass` for blocks of ``pixels`` output pixels (4 or 5),
    in the order they are written (mirrored when ``flip``): per block its first source
    offset into the row (``bases``), and in ``free`` (``block_floats(kx)`` per block)
    16 weights per tap, one lane per value of the block (zero past its values), then 16
    byte indices of the first tap's values into the 32 floats from that offset (the
    next taps' are 3 floats further each). ``columns`` and ``weights`` are the
    per-column taps (``kx`` per column). Returns False, leaving the layout unusable,
    when some block's taps spread over more than 32 floats."""
    codes = free.view(np.uint8)
    for b in range((out_w + pixels - 1) // pixels):
        first, last = b * pixels, min((b + 1) * pixels, out_w) - 1
        # the leftmost tap: the first pixel written's, or mirrored, the last's
        low = np.int64(columns[out_w - 1 - last] if flip else columns[first])
        bases[b] = _U(low)
        at = b * block_floats(kx)
        for k in range(block_floats(kx)):
            free[at + k] = 0.0  # also index 0: the same bits
        for j in range(last - first + 1):
            x = out_w - 1 - (first + j) if flip else first + j
            index = np.int64(columns[x]) - low
            if index + 3 * kx - 1 >= _SPAN:
                return False
            for c in range(3):
                codes[4 * (at + 16 * kx) + 3 * j + c] = np.uint8(index + c)
                for t in range(kx):
                    free[at + 16 * t + 3 * j + c] = weights[x * kx + t]
    return True


@njit(fastmath=True, nogil=True, inline='always')
def block_floats(kx):
    """Floats of :func:`block_layout` per block: 16 weights per tap, 16 byte indices."""
    return 16 * kx + 4


@njit(fastmath=True, nogil=True, inline='always')
def block_pass(row, bases, layout, kx, pixels, line, out_w, mul, add):
    """The horizontal pass of one row with :func:`block_layout`'s taps, a block of
    ``pixels`` output pixels per 16-lane operation, written left to right."""
    m0, m1, m2 = np.float32(mul[0]), np.float32(mul[1]), np.float32(mul[2])
    a0, a1, a2 = np.float32(add[0]), np.float32(add[1]), np.float32(add[2])
    for b in range((out_w + pixels - 1) // pixels):
        start = 3 * pixels * b
        # a 16-lane store also writes values of the next block, which it then
        # overwrites; near the row's end only the block's own values are stored
        left = 3 * out_w - start
        count = 16 if left >= 16 else min(left, 3 * pixels)
        # (one call per tap count: an intrinsic's code is chosen when numba compiles)
        if kx == 2:
            _block2(line, _U(start), row, bases[b], layout, _U(block_floats(kx) * b),
                    m0, m1, m2, a0, a1, a2, count)
        else:
            _block3(line, _U(start), row, bases[b], layout, _U(block_floats(kx) * b),
                    m0, m1, m2, a0, a1, a2, count)


@njit(fastmath=True, nogil=True, inline='always')
def pair_layout(columns, weights, kx, out_w, flip, free):
    """The taps of :func:`pair_pass`: per output pixel in the order it is
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
def pair_pass(row, pair_columns, pair_weights, kx, line, out_w, mul, add):
    """The horizontal pass of one row for ``kx`` = 2 or 3 taps, two output pixels per
    vector operation (:func:`pair_layout` holds their taps), written left to
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


_I8, _I32, _I64, _F32 = ir.IntType(8), ir.IntType(32), ir.IntType(64), ir.FloatType()


def _vector(element, lanes):
    return ir.VectorType(element, lanes)


def _accepts(line, row, weights, offsets, factors, count) -> bool:
    """Whether an intrinsic's arguments have the types its code is written for (others
    get numba's typing error)."""
    return (isinstance(line, types.Array) and line.dtype in (types.uint8, types.float32)
            and all(isinstance(a, types.Array) and a.dtype == types.float32
                    for a in (row, weights))
            and all(isinstance(v, types.Integer) for v in offsets)
            and all(v == types.float32 for v in factors)
            and isinstance(count, types.Integer) and count.signed)


class _Code:
    """llvmlite helpers shared by the two kernels' code generators."""

    def __init__(self, context, builder):
        self.context, self.builder = context, builder

    def data(self, ty, value):
        return self.context.make_array(ty)(self.context, self.builder, value).data

    def load(self, pointer, offset, constant, vector_type):
        """``vector_type`` from ``pointer[offset + constant]`` (any alignment)."""
        b = self.builder
        at = b.gep(pointer, [b.add(offset, ir.Constant(_I64, constant))])
        return b.load(b.bitcast(at, vector_type.as_pointer()), align=4)

    def weighted_sum(self, terms):
        """The sum of ``taps * weights`` over ``terms``, (taps, weights) vector pairs,
        added in order."""
        total = None
        for taps, weights in terms:
            term = self.builder.fmul(taps, weights, flags=('fast',))
            total = term if total is None else self.builder.fadd(total, term, flags=('fast',))
        return total

    def lanes(self, values):
        vector = ir.Constant(_vector(_F32, len(values)), [0.0] * len(values))
        for lane, value in enumerate(values):
            vector = self.builder.insert_element(vector, value, ir.Constant(_I32, lane))
        return vector

    def store_levels(self, line, line_v, d_v, total, factors, count_v, own):
        """Rounds the vector of sums ``total`` to levels and stores them at
        ``line[d:]``: uint8 ``line`` the levels, float32 level * factors[:3][lane % 3]
        + factors[3:][lane % 3]; all lanes when ``count`` is the vector's width, else
        the first ``count`` (at most ``own``)."""
        b, width = self.builder, total.type.count
        fast = ('fast',)
        half = self.lanes([ir.Constant(_F32, 0.5)] * width)
        level = b.fptosi(b.fadd(total, half), _vector(_I32, width))
        if line.dtype == types.uint8:
            value = b.trunc(level, _vector(_I8, width))
        else:
            mul = self.lanes([factors[lane % 3] for lane in range(width)])
            add = self.lanes([factors[3 + lane % 3] for lane in range(width)])
            value = b.fadd(b.fmul(b.sitofp(level, _vector(_F32, width)), mul, flags=fast),
                           add, flags=fast)
        out = b.gep(self.data(line, line_v), [d_v])
        count = b.sext(count_v, _I64) if count_v.type.width < 64 else count_v
        is_wide = b.icmp_signed('==', count, ir.Constant(count.type, width))
        with b.if_else(is_wide) as (wide, narrow):
            with wide:
                b.store(value, b.bitcast(out, value.type.as_pointer()), align=1)
            with narrow:
                for lane in range(own):
                    inside = b.icmp_signed('>', count, ir.Constant(count.type, lane))
                    with b.if_then(inside):
                        b.store(b.extract_element(value, ir.Constant(_I32, lane)),
                                b.gep(out, [ir.Constant(_I64, lane)]))
        return self.context.get_dummy_value()

    def permute(self, low, indices, high):
        """``concat(low, high)[indices]``, 16 lanes of two 16-float registers: one
        AVX-512 instruction, else lane by lane (correct and slow: where AVX-512 is
        missing the resize compiles it but never runs it)."""
        b = self.builder
        if WIDE_PERMUTE:
            signature = ir.FunctionType(low.type, [low.type, indices.type, high.type])
            permute = b.module.declare_intrinsic('llvm.x86.avx512.vpermi2var.ps.512',
                                                 fnty=signature)
            return b.call(permute, [low, indices, high])
        result = ir.Constant(low.type, [0.0] * 16)
        sixteen = ir.Constant(_I32, 16)
        for lane in range(16):
            index = b.extract_element(indices, ir.Constant(_I32, lane))
            in_high = b.icmp_unsigned('>=', index, sixteen)
            value = b.select(in_high,
                             b.extract_element(high, b.sub(index, sixteen)),
                             b.extract_element(low, b.and_(index, ir.Constant(_I32, 15))))
            result = b.insert_element(result, value, ir.Constant(_I32, lane))
        return result


def _block_intrinsic(kx: int):
    """A numba intrinsic storing one block of output pixels of the horizontal pass with
    ``kx`` taps into ``line[d:]`` (16 lanes when ``count`` is 16, else the first
    ``count``, at most 15): lane ``l`` is the level (uint8 ``line``) or level * m[l %
    3] + a[l % 3] (float32), level = the sum over taps ``t`` of ``weights[i + 16t +
    l]`` times ``row[base + q + 3t]``, ``q`` the ``l``-th byte from float ``i + 16kx``
    of ``weights`` on, rounded to a whole grey level. The 32 floats from ``base`` may
    run past the row into the scratch memory after it: no index picks those."""

    @intrinsic
    def block(typingctx, line, d, row, base, weights, i, m0, m1, m2, a0, a1, a2, count):
        if not _accepts(line, row, weights, (d, base, i), (m0, m1, m2, a0, a1, a2), count):
            return None
        sig = types.void(line, d, row, base, weights, i, m0, m1, m2, a0, a1, a2, count)

        def codegen(context, builder, signature, args):
            line_v, d_v, row_v, base_v, weights_v, i_v, *factors, count_v = args
            code = _Code(context, builder)
            row_p, weights_p = code.data(row, row_v), code.data(weights, weights_v)
            v16f, v16i = _vector(_F32, 16), _vector(_I32, 16)
            low = code.load(row_p, base_v, 0, v16f)
            high = code.load(row_p, base_v, 16, v16f)
            first = builder.zext(code.load(weights_p, i_v, 16 * kx, _vector(_I8, 16)), v16i)
            total = code.weighted_sum(
                (code.permute(low, builder.add(first, ir.Constant(v16i, [3 * t] * 16)), high),
                 code.load(weights_p, i_v, 16 * t, v16f)) for t in range(kx))
            return code.store_levels(line, line_v, d_v, total, factors, count_v, 15)

        return sig, codegen

    return block


def _pair_intrinsic(kx: int):
    """A numba intrinsic storing two output pixels of the horizontal pass with ``kx``
    taps into ``line[d:d + 6]`` (8 lanes when ``count`` is 8, else the first
    ``count``): for each, the level (uint8 ``line``) or level * (m0, m1, m2) + (a0,
    a1, a2) (float32), level = the taps' weighted sum of the RGB triples
    ``row[b + 3t:b + 3t + 3]`` (``b`` = ``b0``, ``b1``), rounded to a whole grey level;
    tap ``t``'s weights are the 8 floats ``weights[i + 8t:]``, 4 per pixel.

    Each tap loads 4 floats per pixel, its triple and the next pixel's first channel,
    which is dropped: past the row's last pixel that is the first of the weights,
    which follow the row in the scratch memory."""

    @intrinsic
    def pair(typingctx, line, d, row, b0, b1, weights, i, m0, m1, m2, a0, a1, a2, count):
        if not _accepts(line, row, weights, (d, b0, b1, i), (m0, m1, m2, a0, a1, a2),
                        count):
            return None
        sig = types.void(line, d, row, b0, b1, weights, i, m0, m1, m2, a0, a1, a2, count)

        def codegen(context, builder, signature, args):
            line_v, d_v, row_v, b0_v, b1_v, weights_v, i_v, *factors, count_v = args
            code = _Code(context, builder)
            row_p, weights_p = code.data(row, row_v), code.data(weights, weights_v)
            v4f, v8f, v8i = _vector(_F32, 4), _vector(_F32, 8), _vector(_I32, 8)
            both = ir.Constant(v8i, list(range(8)))
            total = code.weighted_sum(
                (builder.shuffle_vector(code.load(row_p, b0_v, 3 * t, v4f),
                                        code.load(row_p, b1_v, 3 * t, v4f), both),
                 code.load(weights_p, i_v, 8 * t, v8f)) for t in range(kx))
            # the two triples side by side, the 4th lanes dropped (they are rounded
            # with the rest, then stored nowhere)
            total = builder.shuffle_vector(total, ir.Constant(v8f, [0.0] * 8),
                                           ir.Constant(v8i, [0, 1, 2, 4, 5, 6, 8, 8]))
            return code.store_levels(line, line_v, d_v, total, factors, count_v, 6)

        return sig, codegen

    return pair


_pair2, _pair3 = _pair_intrinsic(2), _pair_intrinsic(3)
_block2, _block3 = _block_intrinsic(2), _block_intrinsic(3)

