"""The decoder's area resize against OpenCV's INTER_AREA (what ffcv's resize_crop calls)."""
import cv2
import numpy as np
import pytest

from numba import njit

from ffcv_imagenet.data.read import resize as resize_module
from ffcv_imagenet.data.read import resize_vector
from ffcv_imagenet.data.read.resize import resize_crop_area, resize_kernel, scratch_sizes

ONE, ZERO = (np.full(3, v, np.float32) for v in (1.0, 0.0))


def smooth_image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3)).astype(np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def resize(image, top, left, crop_h, crop_w, out_h, out_w, dtype=np.uint8, flip=False,
           mul=ONE, add=None, kernel=resize_crop_area):
    floats, indices = scratch_sizes(*image.shape[:2], out_h, out_w)
    # garbage in the scratch must not leak into the result; the 16 values after each
    # array (guards) must not change
    scratch = np.full(floats + 16, np.nan, np.float32)
    columns = np.full(indices + 16, 2**40, np.uint64)
    memory = np.full(out_h * out_w * 3 + 16, 77, dtype)
    out = memory[:-16].reshape(out_h, out_w, 3)
    out[:] = 0
    if add is None:
        add = ZERO
    kernel(image, top, left, crop_h, crop_w, out, flip, mul, add, scratch[:floats],
           columns[:indices])
    assert np.isnan(scratch[floats:]).all() and (columns[indices:] == 2**40).all()
    assert (memory[-16:] == 77).all()
    return out


def opencv_area(image, top, left, crop_h, crop_w, out_h, out_w):
    return cv2.resize(image[top:top + crop_h, left:left + crop_w], (out_w, out_h),
                      interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize('crop, out', [
    ((230, 200), (160, 160)),   # shrink by less than 2x: three taps
    ((96, 250), (64, 80)),      # a different factor per axis
    ((300, 280), (64, 64)),     # shrink by more than 2x: the general loop
    ((128, 128), (64, 64)),     # an integer factor
    ((160, 160), (160, 160)),   # same size: a copy
])
def test_shrinking_gives_opencvs_area_pixels(crop, out):
    image = smooth_image(320, 300)
    top, left = 7, 11
    got = resize(image, top, left, *crop, *out)
    expected = opencv_area(image, top, left, *crop, *out)
    assert np.abs(got.astype(int) - expected).max() <= 1
    assert np.mean(got == expected) > 0.99


@pytest.mark.parametrize('crop, out', [((120, 130), (160, 160)), ((40, 200), (160, 100)),
                                       ((2, 3), (8, 8))])
def test_enlarging_is_within_one_grey_level_of_opencv(crop, out):
    image = smooth_image(256, 256, seed=1)
    got = resize(image, 30, 40, *crop, *out)
    expected = opencv_area(image, 30, 40, *crop, *out)
    assert np.abs(got.astype(int) - expected).max() <= 1


@pytest.mark.parametrize('crop', [(150, 170),    # shrinking by less than 2x: 3 taps
                                  (60, 70),      # enlarging: 2 taps
                                  (190, 175)])   # shrinking by more than 2x: general
def test_float_output_is_normalised_and_flip_mirrors_the_columns(crop):
    """Each tap count's loop, in both roundings: uint8 (and unnormalised float) levels,
    and normalised levels."""
    image = smooth_image(200, 180, seed=2)
    box, out = (5, 2, *crop), ((96, 112) if crop[0] < 180 else (80, 50))
    mul = np.array([1 / 50, 1 / 60, 1 / 70], np.float32)
    add = np.array([-2.0, -1.5, -1.0], np.float32)
    plain = resize(image, *box, *out, dtype=np.float32)
    # float output holds the uint8 output's whole levels (the CPU and GPU paths agree)
    np.testing.assert_array_equal(plain, resize(image, *box, *out))
    reference = opencv_area(image, *box, *out)
    assert np.abs(plain - reference).max() <= 1
    normalised = resize(image, *box, *out, dtype=np.float32, mul=mul, add=add)
    np.testing.assert_allclose(normalised, plain * mul + add, rtol=1e-5, atol=1e-5)
    flipped = resize(image, *box, *out, dtype=np.float32, flip=True, mul=mul, add=add)
    np.testing.assert_array_equal(flipped, normalised[:, ::-1])
    np.testing.assert_array_equal(resize(image, *box, *out, flip=True),
                                  resize(image, *box, *out)[:, ::-1])


def test_a_constant_image_stays_constant_at_every_scale():
    image = np.full((100, 90, 3), (0, 128, 255), np.uint8)  # the range's ends round back
    for crop, out in [((100, 90), (37, 41)), ((17, 13), (64, 64)), ((99, 89), (5, 3))]:
        got = resize(image, 0, 0, *crop, *out)
        assert (got == image[0, 0]).all()


def test_scratch_sizes_cover_the_largest_shrink():
    # the widest image, shrunk to the narrowest output: the most taps per column
    image = smooth_image(8, 500)
    got = resize(image, 0, 0, 8, 500, 4, 3)
    expected = opencv_area(image, 0, 0, 8, 500, 4, 3)
    assert np.abs(got.astype(int) - expected).max() <= 1


def one_axis_at_a_time(image, top, left, crop_h, crop_w, out_h, out_w):
    """OpenCV's area filter on the rows, then on the columns. Where one axis shrinks
    and the other enlarges, OpenCV's INTER_AREA gives both axes its enlarging (linear)
    weights; the decoder's filter keeps the box on the shrinking axis, which is this."""
    rows = opencv_area(image, top, left, crop_h, crop_w, out_h, crop_w)
    return opencv_area(rows, 0, 0, out_h, crop_w, out_h, out_w)


@pytest.mark.parametrize('crop_w', [0, 1, 2, 7])
def test_shrinking_one_axis_and_enlarging_the_other_keeps_the_box(crop_w):
    # also crops one or two pixels wide, and an empty one (taken as one pixel)
    image = smooth_image(64, 64, seed=3)
    got = resize(image, 10, 20, 30, crop_w, 16, 12)
    expected = one_axis_at_a_time(image, 10, 20, 30, max(1, crop_w), 16, 12)
    assert np.abs(got.astype(int) - expected).max() <= 1


def test_uint8_flip_mirrors_the_columns_when_enlarging_a_narrow_image():
    image = smooth_image(40, 6, seed=4)
    plain = resize(image, 0, 0, 40, 6, 50, 30)
    flipped = resize(image, 0, 0, 40, 6, 50, 30, flip=True)
    np.testing.assert_array_equal(flipped, plain[:, ::-1])
    assert np.abs(plain.astype(int) - opencv_area(image, 0, 0, 40, 6, 50, 30)).max() <= 1


def test_each_pipeline_gets_its_own_kernel_whose_machine_code_comes_from_disk():
    """The decoder's resize is compiled once per machine, not in every process's first
    epoch (2-3 s per loader), and no two pipelines share a dispatcher."""
    image = smooth_image(96, 120, seed=3)
    first, second = resize_kernel(), resize_kernel()
    assert first is not second
    expected = resize(image, 5, 6, 80, 90, 40, 48)
    assert np.array_equal(resize(image, 5, 6, 80, 90, 40, 48, kernel=first), expected)
    # the first one compiled (or loaded) and wrote the cache: the second only loads it
    assert np.array_equal(resize(image, 5, 6, 80, 90, 40, 48, kernel=second), expected)
    assert second.stats.cache_hits and not second.stats.cache_misses


@pytest.mark.parametrize('dtype', [np.uint8, np.float32])
# 2 and 3 taps (the vector loops), and 3 taps spread so wide that a block takes 4 pixels
@pytest.mark.parametrize('crop', [(60, 70), (150, 170), (150, 210)])
@pytest.mark.parametrize('flip', [False, True])
# the row ends in a pair or in one pixel; in a block of 5, 2, or exactly 5 pixels
@pytest.mark.parametrize('out_w', [112, 111, 110])
def test_the_vector_loop_writes_nothing_past_the_image(dtype, crop, flip, out_w):
    """Their stores reach values of the next pixels (8 lanes for 6 values, 16 for 12
    or 15): the row's last pixels must store only theirs, or the values after the
    image (the next image of the batch) change."""
    image = smooth_image(200, 240, seed=5)
    out_h = 96
    floats, indices = scratch_sizes(200, 240, out_h, out_w)
    memory = np.full(out_h * out_w * 3 + 4, 77, dtype)
    out = memory[:-4].reshape(out_h, out_w, 3)
    resize_crop_area(image, 5, 2, *crop, out, flip, ONE, ZERO,
                     np.full(floats, np.nan, np.float32), np.zeros(indices, np.uint64))
    assert (memory[-4:] == 77).all()
    np.testing.assert_array_equal(out, resize(image, 5, 2, *crop, out_h, out_w, dtype=dtype,
                                              flip=flip))


@pytest.mark.slow
def test_the_block_and_pair_loops_and_emulated_permutes_give_the_same_pixels(monkeypatch):
    """The horizontal pass for 2-3 taps has two vector loops: blocks of 4-5 pixels
    (AVX-512 permutes) and pairs (every other CPU). Each is compiled here as the
    resize would be on such a CPU, and the block loop once more with its permutes
    computed lane by lane (what LLVM gets where AVX-512 is missing); all must give
    the same pixels (the other tests hold the loops to OpenCV's), over enlarging,
    1.1-1.9x shrinking and flips, and write nothing past their arrays (``resize``'s
    guards)."""
    def compiled(blocks: bool, native_permutes: bool):
        # numba reads these module constants when it compiles, on the first call
        monkeypatch.setattr(resize_module, 'WIDE_PERMUTE', blocks)
        monkeypatch.setattr(resize_vector, 'WIDE_PERMUTE', native_permutes)
        kernel = njit(fastmath=True, nogil=True)(resize_crop_area.py_func)
        for dtype in (np.uint8, np.float32):
            resize(smooth_image(8, 8), 0, 0, 8, 8, 4, 4, dtype=dtype, kernel=kernel)
        return kernel

    native = resize_vector.has_wide_permute()
    kernels = {'pairs': compiled(False, native), 'emulated blocks': compiled(True, False)}
    if native:
        kernels['blocks'] = compiled(True, True)
    image = smooth_image(260, 300, seed=7)
    mul = np.array([1 / 50, 1 / 60, 1 / 70], np.float32)
    add = np.array([-2.0, -1.5, -1.0], np.float32)
    for crop_w in (37, 100, 150, 190, 212):  # over 111 or 112 pixels: 0.33-1.91x
        for out_w in (110, 111, 112):
            for flip in (False, True):
                for dtype, scale, shift in ((np.uint8, ONE, ZERO), (np.float32, mul, add)):
                    results = {name: resize(image, 3, 5, 150, crop_w, 90, out_w, dtype=dtype,
                                            flip=flip, mul=scale, add=shift, kernel=kernel)
                               for name, kernel in kernels.items()}
                    for name, got in results.items():
                        np.testing.assert_array_equal(got, results['pairs'], err_msg=name)


@pytest.mark.slow
def test_a_change_in_the_vector_code_compiles_the_resize_anew(monkeypatch, tmp_path):
    """numba's on-disk cache checks only the cached function's own file, and the
    vector code is inlined from another: its hash, in the kernel's closure, keeps
    machine code built from an older resize_vector.py from being loaded."""
    import hashlib
    from pathlib import Path
    monkeypatch.setattr('numba.config.CACHE_DIR', str(tmp_path))
    image = smooth_image(40, 40, seed=4)

    def cached(version: str):
        kernel = njit(fastmath=True, nogil=True, cache=True)(
            resize_module._kernel_keyed_to(version))
        resize(image, 0, 0, 30, 30, 20, 20, kernel=kernel)
        return kernel.stats

    assert cached('one version').cache_misses
    assert cached('one version').cache_hits
    other = cached('another version')
    assert other.cache_misses and not other.cache_hits
    source = Path(resize_vector.__file__).read_bytes()
    contents = [cell.cell_contents for cell in resize_kernel().py_func.__closure__]
    assert contents == [hashlib.sha256(source).hexdigest()]
