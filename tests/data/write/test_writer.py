"""Writing a .beton (data/write/writer.py): the summary line, the sizes and storage
modes asked for, a failed write that keeps the previous file, and files that fail or run
away (hang, allocate, crash) while being checked or written: skipped with their reason,
the rest stored with their labels."""
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ffcv_imagenet.data.folders import DatasetError, list_tree
from ffcv_imagenet.data.write import writer
from ffcv_imagenet.data.write.images import check_image, load_rgb
from ffcv_imagenet.data.write.writer import WriteReport, write_beton
from tests.support import ROOT, skipped_reasons, stored_labels_and_sizes


def test_the_summary_line_counts_sizes_and_points_at_the_skipped_list(tmp_path):
    out = tmp_path / 'train.beton'
    report = WriteReport(out, written=3, skipped=[('a.JPEG', 'truncated')], seconds=1.5,
                         bytes=3 * 2 ** 20)
    assert report.summary() == (f"wrote 3 images, 1 skipped (see {out}.skipped.txt), in "
                                f"1.5 s, 3.0 MiB -> {out}")
    clean = WriteReport(out, written=2, seconds=0.25, bytes=2 ** 19)
    assert clean.summary() == f"wrote 2 images, 0 skipped, in 0.2 s, 0.5 MiB -> {out}"


# --- what the converter stores -----------------------------------------------------------

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


# --- a failed write keeps the previous file ----------------------------------------------

def test_failed_write_keeps_the_previous_file(synth, tmp_path, monkeypatch):
    out = tmp_path / 'train.beton'
    out.write_bytes(b'previous good file')
    import ffcv.writer

    def crash(self, *args, **kwargs):
        Path(self.fname).write_bytes(b'half written')
        raise KeyboardInterrupt
    monkeypatch.setattr(ffcv.writer.DatasetWriter, 'from_indexed_dataset', crash)
    samples, classes = list_tree(synth / 'train')
    with pytest.raises(KeyboardInterrupt):
        write_beton(samples, out, classes, num_workers=1)
    assert out.read_bytes() == b'previous good file'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['train.beton']


def test_unwritable_output_path(synth, tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    samples, classes = list_tree(synth / 'train')
    with pytest.raises(DatasetError, match='cannot write to .*a_file/out.beton'):
        write_beton(samples, blocker / 'out.beton', classes)


def test_a_write_whose_allocation_table_was_lost_is_refused(synth, tmp_path, monkeypatch):
    """ffcv's finalize swallows any exception (Ctrl-C too) while it builds the allocation
    table and then writes the file without one: such a file must not replace the output."""
    out = tmp_path / 'train.beton'
    out.write_bytes(b'previous good file')
    import ffcv.writer
    finalize = ffcv.writer.DatasetWriter.finalize
    monkeypatch.setattr(ffcv.writer.DatasetWriter, 'finalize',
                        lambda self, allocations: finalize(self, []))
    samples, classes = list_tree(synth / 'train')
    with pytest.raises(DatasetError, match=r'0 of 48 images were stored'):
        write_beton(samples, out, classes, num_workers=1)
    assert out.read_bytes() == b'previous good file'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['train.beton']


# --- files that fail or run away while being checked or written --------------------------

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


FAULTS = {  # file name prefix -> what the decoder does on it
    'sleeps': lambda: time.sleep(120),
    'hogs': lambda: np.ones(2**30, np.uint8),  # 1 GiB, over the 128 MiB limit below
    'dies': lambda: os.kill(os.getpid(), signal.SIGKILL),  # as the OOM killer does
    'crashes': lambda: ctypes.string_at(0),  # SIGSEGV
    'raises': lambda: (_ for _ in ()).throw(NotImplementedError('an odd plugin')),
}

REASONS = {'sleeps': 'took longer than 1 s', 'hogs': 'MemoryError (limit: 128 MiB',
           'dies': 'worker died (signal 9)', 'crashes': 'worker died (signal 11)',
           'raises': 'NotImplementedError: an odd plugin'}


def faulty(decode):
    def wrapped(path):
        prefix = Path(path).stem.split('_')[0]
        if prefix in FAULTS:
            FAULTS[prefix]()
        return decode(path)
    return wrapped


@pytest.fixture
def runaway_tree(synth, tmp_path):
    """Valid images in two classes; five of them trigger a fault, when it is injected."""
    root = tmp_path / 'runaway'
    photos = sorted((synth / 'train').rglob('*.JPEG'))
    for n, name in enumerate(['a0', 'sleeps_1', 'a2', 'hogs_3', 'dies_4', 'a5',
                              'crashes_6', 'a7', 'raises_8', 'a9']):
        path = root / ('c0', 'c1')[n % 2] / f'{name}.JPEG'
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photos[n], path)
    samples, classes = list_tree(root)
    return samples, classes


def _convert_with_limits(samples, classes, out, **kwargs):
    return write_beton(samples, out, classes, max_resolution=0, write_mode='raw',
                       num_workers=2, chunk_size=2, max_seconds_per_image=1,
                       max_memory_mb_per_image=128, **kwargs)


def _assert_faulty_files_skipped_rest_stored(samples, out, took):
    reasons = skipped_reasons(out)
    assert sorted(Path(p).stem.split('_')[0] for p in reasons) == sorted(FAULTS)
    for path, reason in reasons.items():
        assert REASONS[Path(path).stem.split('_')[0]] in reason, (path, reason)
    kept = [(label, load_rgb(path).shape[:2]) for path, label in samples
            if path not in reasons]
    assert stored_labels_and_sizes(out) == kept  # no placeholder, labels still in step
    assert took < 30  # one second per runaway file, not the default minute


@pytest.mark.parametrize('phase', ['check', 'write'])
def test_runaway_decoders_are_stopped_and_the_conversion_goes_on(
        runaway_tree, tmp_path, monkeypatch, phase):
    """In the check, and in the write (files that pass the check, then fail)."""
    samples, classes = runaway_tree
    if phase == 'check':
        monkeypatch.setattr(writer, 'check_image', faulty(check_image))
    else:
        monkeypatch.setattr(writer, 'load_rgb', faulty(load_rgb))
    out = tmp_path / 'runaway.beton'
    start = time.monotonic()
    result = _convert_with_limits(samples, classes, out)
    took = time.monotonic() - start
    assert result.written == len(samples) - len(FAULTS) and len(result.skipped) == len(FAULTS)
    _assert_faulty_files_skipped_rest_stored(samples, out, took)


def test_strict_stops_at_a_file_that_fails_while_being_written(runaway_tree, tmp_path,
                                                              monkeypatch):
    samples, classes = runaway_tree
    monkeypatch.setattr(writer, 'load_rgb', faulty(load_rgb))
    out = tmp_path / 'strict.beton'
    out.write_bytes(b'previous good file')
    with pytest.raises(DatasetError, match=r'unreadable image \S+(sleeps|hogs|dies|crashes|'
                                           r'raises)_\d\.JPEG: '):
        _convert_with_limits(samples, classes, out, strict=True)
    assert out.read_bytes() == b'previous good file'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['runaway', 'strict.beton']


def test_the_memory_limit_applies_to_real_decoding(tmp_path):
    """A PNG declaring 10000 x 10000 pixels is under Pillow's bomb limit, so Pillow
    allocates 400 MB for it: over a 128 MiB limit that fails at once."""
    from tests.support import png_declaring
    path = tmp_path / 'big.JPEG'
    path.write_bytes(png_declaring(10_000, 10_000))

    def reason(memory_mb):
        # in a fresh interpreter, as the converter runs: the cap counts new address
        # space, and a test process that has churned through gigabytes hands its
        # forks free heap that a decoder can reuse without growing it
        script = ("import sys; from ffcv_imagenet.data.write import writer; "
                  "from ffcv_imagenet.data.write.sandbox import Limits; "
                  "[(_, why)] = writer.find_bad_files([sys.argv[1]], 1, "
                  "Limits(seconds=60, memory_mb=int(sys.argv[2]))); print(why)")
        done = subprocess.run([sys.executable, '-c', script, str(path), str(memory_mb)],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip().splitlines()[-1]
    capped, uncapped = reason(128), reason(0)
    assert capped.startswith('MemoryError (limit: 128 MiB')
    assert 'truncated' in uncapped
