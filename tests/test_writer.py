import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ffcv.fields.basics import IntDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.transforms import ToTensor

import write_datasets
from ffcv_imagenet.data.folders import DatasetError, list_tree
from ffcv_imagenet.data.write.writer import skipped_path, write_beton

from test_images import bad_files, odd_images

ROOT = Path(__file__).resolve().parents[1]


def beton_labels(path):
    loader = Loader(str(path), batch_size=16, num_workers=1, order=OrderOption.SEQUENTIAL,
                    drop_last=False, pipelines={'image': None, 'label': [IntDecoder(), ToTensor()]})
    return np.concatenate([labels.numpy().ravel() for (labels,) in loader]).tolist()


def convert(*args):
    return write_datasets.main([f'--cfg.{a}' for a in args])


def test_labels_round_trip_and_class_file(synth, tmp_path):
    out = tmp_path / 'train.beton'
    assert convert(f'data_dir={synth}/train', f'write_path={out}', 'max_resolution=64') == 0
    samples, classes = list_tree(synth / 'train')
    assert beton_labels(out) == [label for _, label in samples]
    saved = json.loads(Path(f'{out}.classes.json').read_text())
    assert saved['classes'] == classes
    assert saved['names'][0] == 'red stripes'  # from LOC_synset_mapping.txt
    assert not skipped_path(out).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]  # no temp files

    val = tmp_path / 'val.beton'
    convert('split=val', f'data_dir={synth}/val', f'write_path={val}', 'max_resolution=64',
            f'classes={out}.classes.json')
    assert beton_labels(val) == [label for _, label in list_tree(synth / 'val', classes)[0]]


def test_subset_is_stratified(synth, tmp_path):
    out = tmp_path / 'sub.beton'
    convert(f'data_dir={synth}/train', f'write_path={out}', 'max_resolution=32', 'subset=20')
    assert np.bincount(beton_labels(out)).tolist() == [5, 5, 5, 5]


@pytest.fixture
def messy_tree(synth, tmp_path):
    """Two classes: real images plus bad files (class a) and odd images (class b)."""
    root = tmp_path / 'messy'
    (root / 'a').mkdir(parents=True)
    (root / 'b').mkdir()
    for i, image in enumerate(sorted((synth / 'train').rglob('*.JPEG'))[:3]):
        shutil.copy(image, root / 'a' / f'good{i}.JPEG')
    bad = bad_files(root / 'a')
    odd = odd_images(root / 'b')
    return root, bad, odd


def test_bad_files_are_skipped_and_reported_odd_ones_kept(messy_tree, tmp_path):
    root, bad, odd = messy_tree
    out = tmp_path / 'messy.beton'
    convert(f'data_dir={root}', f'write_path={out}', 'max_resolution=64')
    assert beton_labels(out) == [0] * 3 + [1] * len(odd)
    report = dict(line.split('\t') for line in skipped_path(out).read_text().splitlines())
    assert sorted(report) == sorted(str(p) for p in bad.values())
    assert all(reason for reason in report.values())


def test_strict_mode_fails_naming_the_first_bad_file_and_writes_nothing(messy_tree, tmp_path):
    root, bad, _ = messy_tree
    out = tmp_path / 'strict.beton'
    with pytest.raises(DatasetError, match='unreadable image .*empty.JPEG'):
        convert(f'data_dir={root}', f'write_path={out}', 'strict=1')
    assert list(tmp_path.glob('strict.beton*')) == [] and not list(tmp_path.glob('.strict*'))


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


def _run_cli(*args):
    return subprocess.run([sys.executable, 'write_datasets.py', *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize('args, message', [
    (['--cfg.data_dir=/no/such/dir', '--cfg.write_path=/tmp/x.beton'],
     'error: data dir not found: /no/such/dir'),
    (['--cfg.split=val', '--cfg.data_dir=/tmp', '--cfg.write_path=/tmp/x.beton'],
     'error: the val split needs --cfg.classes'),
    (['--cfg.data_dir=/tmp', '--cfg.write_path=/tmp/x.beton', '--cfg.jpeg_quality=high'],
     "error: bad value for cfg.jpeg_quality: 'high'"),
    (['--cfg.data_dir=/tmp', '--cfg.write_path=/tmp/x.beton', '--cfg.write_mode=png'],
     "error: bad value for cfg.write_mode: 'png'"),
    (['--cfg.write_path=/tmp/x.beton'], 'error: missing required config value --cfg.data_dir'),
    (['-C', '/no/such.yaml'], 'error: config file not found: /no/such.yaml'),
])
def test_cli_errors_are_one_line(args, message):
    result = _run_cli(*args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(message)


def test_unknown_key_in_config_file(tmp_path):
    config = tmp_path / 'c.yaml'
    config.write_text('cfg:\n  max_resolutoin: 128\n')
    result = _run_cli('-C', str(config))
    assert result.returncode == 2
    assert "unknown config key 'cfg.max_resolutoin'" in result.stderr


@pytest.mark.slow
def test_interrupted_conversion_leaves_no_file_at_the_final_path(tmp_path):
    from ffcv_imagenet.data.synthetic import generate
    data = generate(tmp_path / 'data', classes=4, train_per_class=150, val_per_class=0,
                    workers=2)
    out = tmp_path / 'out' / 'train.beton'
    process = subprocess.Popen([sys.executable, 'write_datasets.py',
                                f'--cfg.data_dir={data}/train', f'--cfg.write_path={out}',
                                '--cfg.max_resolution=0', '--cfg.num_workers=1',
                                '--cfg.chunk_size=5'],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               # a shell's background job starts with SIGINT ignored
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while not list(out.parent.glob('.train.beton.*')) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # well inside the write
    assert process.poll() is None, 'conversion finished before it could be interrupted'
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    assert process.returncode != 0
    assert not out.exists()
    assert not list(out.parent.glob('.train.beton.*'))
