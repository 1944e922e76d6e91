"""A conversion never crashes on a file (issue 12, item 1).

A folder of broken and exotic files named .JPEG is converted as a user would
(``write_datasets.py`` in a subprocess): every bad file is skipped and reported with
its reason, every odd but valid one is stored with its label, and nothing the C
libraries print reaches the terminal. Runaway decoders (hanging, allocating,
crashing) are injected by monkeypatching the decode functions the writer calls, in
the check and in the write, to prove the per-file limits and the recovery.
"""
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ffcv.reader import Reader

from ffcv_imagenet.data.write import writer
from ffcv_imagenet.data.folders import DatasetError, list_tree
from ffcv_imagenet.data.write.images import check_image, load_rgb
from ffcv_imagenet.data.write.writer import skipped_path, write_beton
from odd_files import CHATTY, bad_file_bytes, good_file_bytes

ROOT = Path(__file__).resolve().parents[1]
TQDM_LINE = re.compile(r'^(checking:)? *\d+%\|')


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    """A two-class tree with bad and good files interleaved in both classes:
    (root, {bad path}, {good path: (height, width)})."""
    root = tmp_path_factory.mktemp('odd') / 'train'
    bad, good = set(), {}
    items = [(name, data, None) for name, data in bad_file_bytes().items()]
    items += [(name, data, shape) for name, (data, shape) in good_file_bytes().items()]
    for n, (name, data, shape) in enumerate(sorted(items)):
        path = root / ('n01', 'n02')[n % 2] / f'{name}.JPEG'
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if shape is None:
            bad.add(str(path))
        else:
            good[str(path)] = shape
    return root, bad, good


def stored(beton):
    """[(label, (height, width))] of every image in ``beton``, in order."""
    reader = Reader(str(beton))
    image, label = (reader.metadata[f'f{reader.field_names.index(name)}']
                    for name in ('image', 'label'))
    return [(int(lab), (int(img['height']), int(img['width'])))
            for img, lab in zip(image, label)]


def expected(root, good):
    """What a .beton of ``root`` must hold: the good files, in listing order."""
    samples, _ = list_tree(root)
    return [(label, good[path]) for path, label in samples if path in good]


def report(beton):
    return dict(line.split('\t') for line in skipped_path(beton).read_text().splitlines())


def convert_cli(*args):
    return subprocess.run([sys.executable, 'write_datasets.py', *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_the_chatty_files_do_print_when_read_unguarded(corpus):
    """The premise of the next test: reading these files directly floods stderr."""
    root, bad, _ = corpus
    chatty = [p for p in sorted(bad) if Path(p).stem in CHATTY]
    code = ('import sys\nfrom ffcv_imagenet.data.write.images import check_image\n'
            'for path in sys.argv[1:]:\n    assert check_image(path)\n')
    result = subprocess.run([sys.executable, '-c', code, *chatty], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert len(result.stderr.strip().splitlines()) >= len(chatty)


def test_cli_skips_every_bad_file_keeps_every_odd_one_and_keeps_stderr_clean(
        corpus, tmp_path):
    root, bad, good = corpus
    out = tmp_path / 'odd.beton'
    result = convert_cli(f'--cfg.data_dir={root}', f'--cfg.write_path={out}',
                         '--cfg.max_resolution=0', '--cfg.write_mode=raw')
    assert result.returncode == 0, result.stderr
    assert f"wrote {len(good)} images, {len(bad)} skipped" in result.stdout
    reasons = report(out)
    assert set(reasons) == bad
    assert all(reason.strip() for reason in reasons.values())
    [dds] = [reason for path, reason in reasons.items() if 'dds_dxgi_93' in path]
    assert dds.startswith('NotImplementedError')  # what crashed the old checking pool
    assert stored(out) == expected(root, good)
    lines = [line for line in re.split(r'[\r\n]', result.stderr) if line.strip()]
    assert all(TQDM_LINE.match(line) for line in lines), lines  # progress bars only
    assert any(line.startswith('checking:') for line in lines)  # which still show
    # what libtiff printed went into the reasons instead
    assert sum('[stderr: ' in reasons[p] for p in bad if Path(p).stem in CHATTY) >= 3


def test_cli_strict_stops_naming_the_file_and_leaves_the_output(corpus, tmp_path):
    root, bad, _ = corpus
    out = tmp_path / 'strict.beton'
    out.write_bytes(b'previous good file')
    result = convert_cli(f'--cfg.data_dir={root}', f'--cfg.write_path={out}',
                         '--cfg.strict=1')
    assert result.returncode == 2
    message = [line for line in re.split(r'[\r\n]', result.stderr)
               if line.strip() and not TQDM_LINE.match(line)]
    assert len(message) == 1 and message[0].startswith('error: unreadable image ')
    assert any(path in message[0] for path in bad)
    assert out.read_bytes() == b'previous good file'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['strict.beton']


# --- runaway decoders, injected -------------------------------------------------------

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
    reasons = report(out)
    assert sorted(Path(p).stem.split('_')[0] for p in reasons) == sorted(FAULTS)
    for path, reason in reasons.items():
        assert REASONS[Path(path).stem.split('_')[0]] in reason, (path, reason)
    kept = [(label, load_rgb(path).shape[:2]) for path, label in samples
            if path not in reasons]
    assert stored(out) == kept  # no placeholder, labels still in step
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
    from odd_files import png_declaring
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
