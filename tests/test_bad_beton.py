"""A bad .beton, class list or path stops the loaders and the trainer with one line
naming the file (DatasetError; exit code 2 from train_imagenet.py), never a traceback
from inside ffcv."""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ffcv.fields import FloatField, IntField, RGBImageField
from ffcv.types import ALLOC_TABLE_TYPE, CURRENT_VERSION, FieldDescType, HeaderType
from ffcv.writer import DatasetWriter
from PIL import Image

from ffcv_imagenet.data.read.beton import check_beton, check_dataset
from ffcv_imagenet.data.folders import DatasetError, classes_path, load_classes
from ffcv_imagenet.data.read.loaders import train_loader, val_loader
from train_args import tiny_args

ROOT = Path(__file__).resolve().parents[1]
LOADERS = {'train': train_loader, 'val': val_loader}


def copy_beton(source, dest, classes=None):
    """``source`` and its class list copied to ``dest``; ``classes`` replaces the list."""
    shutil.copyfile(source, dest)
    shutil.copyfile(classes_path(source), classes_path(dest))
    if classes is not None:
        classes_path(dest).write_text(json.dumps({'classes': classes}))
    return dest


def assert_one_line_error(make, path, named=None):
    """``make(path)`` raises DatasetError with a one-line message naming ``named``
    (``path`` unless given)."""
    with pytest.raises(DatasetError) as caught:
        make(path)
    message = str(caught.value)
    assert str(named or path) in message
    assert '\n' not in message
    return message


def build(make, path, **kwargs):
    return LOADERS[make](path, batch_size=4, resolution=16, num_workers=1, **kwargs)


@pytest.fixture(scope='module')
def good(betons):
    return betons[0]


def test_a_good_beton_passes_and_reports_what_it_holds(good):
    info = check_dataset(good)
    assert info.num_samples == 48 and (info.min_label, info.max_label) == (0, 3)
    assert info.fields == {'image': 'RGBImageField', 'label': 'IntField'}
    assert info.size == good.stat().st_size
    assert check_beton(good, num_classes=4) == info
    assert build('train', good).info == info


def _alloc_table_start(path):
    return int(np.fromfile(path, dtype=HeaderType, count=1)[0]['alloc_table_ptr'])


# where a copy stops: in the header, the field descriptors, the data pages, exactly
# before the allocation table, inside its first entry, after one entry, one entry short
CUTS = {'header': lambda size, table: 10, 'descriptors': lambda size, table: 500,
        'half': lambda size, table: size // 2, 'no table': lambda size, table: table,
        'mid entry': lambda size, table: table + 12,
        'one entry': lambda size, table: table + ALLOC_TABLE_TYPE.itemsize,
        'last entry lost': lambda size, table: size - ALLOC_TABLE_TYPE.itemsize,
        'last byte lost': lambda size, table: size - 1}


@pytest.mark.parametrize('cut', CUTS)
@pytest.mark.parametrize('make', LOADERS)
def test_a_truncated_copy(good, tmp_path, cut, make):
    raw = good.read_bytes()
    path = copy_beton(good, tmp_path / 'cut.beton')
    path.write_bytes(raw[:CUTS[cut](len(raw), _alloc_table_start(good))])
    message = assert_one_line_error(lambda p: build(make, p), path)
    assert 'cut short' in message or 'not a .beton' in message


def _jpeg(path):
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(path, format='JPEG')


OTHER_FORMATS = {
    'empty file': lambda path: path.write_bytes(b''),
    'random bytes': lambda path: path.write_bytes(
        np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes()),
    'jpeg': _jpeg,
    'text': lambda path: path.write_text('n02085620/img_1.JPEG 0\n' * 200),
    # ffcv's format-1 header: the same layout, an older version number
    'old version': lambda path: path.write_bytes(
        np.array([(1, 2, 1 << 21, 10, 4096)], dtype=HeaderType).tobytes() + bytes(5000)),
}


@pytest.mark.parametrize('kind', OTHER_FORMATS)
@pytest.mark.parametrize('make', LOADERS)
def test_a_file_of_another_format(tmp_path, kind, make):
    path = tmp_path / 'other.beton'
    OTHER_FORMATS[kind](path)
    message = assert_one_line_error(lambda p: build(make, p), path)
    assert 'not a .beton' in message or 'is empty' in message


def test_a_missing_path_or_a_folder(tmp_path):
    assert_one_line_error(lambda p: build('train', p), tmp_path / 'missing.beton')
    assert_one_line_error(lambda p: build('val', p), tmp_path)


def _ffcv_beton(path, fields, samples=3):
    """A .beton written by ffcv's own writer with ``fields`` (name -> field), each
    sample an 8 x 8 image, the int 1 or the float 0.5 as the field asks."""
    values = {RGBImageField: np.zeros((8, 8, 3), np.uint8), IntField: 1, FloatField: 0.5}
    row = tuple(values[type(field)] for field in fields.values())
    writer = DatasetWriter(str(path), fields, num_workers=1, page_size=1 << 21)
    writer.from_indexed_dataset([row] * samples)
    return path


@pytest.mark.parametrize('fields', [
    {'picture': RGBImageField(write_mode='raw'), 'label': IntField()},
    {'image': RGBImageField(write_mode='raw'), 'target': IntField()},
    {'image': RGBImageField(write_mode='raw'), 'label': FloatField()},
    {'image': RGBImageField(write_mode='raw')},
], ids=['no image', 'no label', 'float label', 'image only'])
def test_a_beton_without_the_image_and_label_fields(tmp_path, fields):
    path = _ffcv_beton(tmp_path / 'fields.beton', fields)
    message = assert_one_line_error(lambda p: build('train', p), path)
    assert 'field' in message


def test_other_fields_and_another_field_order_are_read_right(tmp_path):
    # ffcv yields every field of the file, in the file's order
    path = _ffcv_beton(tmp_path / 'extra.beton', {
        'label': IntField(), 'weight': FloatField(), 'image': RGBImageField(write_mode='raw')})
    info = check_beton(path, num_classes=2)
    assert info.num_samples == 3 and info.max_label == 1
    x, y = next(iter(build('val', path)))
    assert x.shape == (3, 3, 16, 16) and y.tolist() == [1, 1, 1]


def _empty_beton(path):
    """What ffcv would write for 0 samples: header, descriptors, no metadata, no table."""
    fields = [('image', 2, RGBImageField()), ('label', 1, IntField())]
    descriptors = np.zeros(len(fields), dtype=FieldDescType)
    for desc, (name, type_id, field) in zip(descriptors, fields):
        desc['type_id'] = type_id
        desc['name'][:len(name)] = np.frombuffer(name.encode(), np.uint8)
        desc['arguments'] = field.to_binary()[0]
    start = HeaderType.itemsize + descriptors.nbytes
    header = np.array([(CURRENT_VERSION, len(fields), 1 << 21, 0, start)], dtype=HeaderType)
    path.write_bytes(header.tobytes() + descriptors.tobytes())
    return path


@pytest.mark.parametrize('make', LOADERS)
def test_an_empty_beton(tmp_path, make):
    path = _empty_beton(tmp_path / 'empty.beton')
    message = assert_one_line_error(lambda p: build(make, p), path)
    assert 'no images' in message


def test_the_empty_beton_builder_matches_ffcvs_layout(tmp_path, good):
    # the hand-made header and descriptors agree with a real file's, but for the counts
    made = _empty_beton(tmp_path / 'empty.beton').read_bytes()
    real = good.read_bytes()[:len(made)]
    assert made[:2] == real[:2] and made[HeaderType.itemsize:] == real[HeaderType.itemsize:]


@pytest.mark.parametrize('make', LOADERS)
def test_a_class_list_shorter_than_the_labels(good, tmp_path, make):
    path = copy_beton(good, tmp_path / 'few.beton', classes=['a', 'b', 'c'])  # labels 0..3
    message = assert_one_line_error(lambda p: build(make, p), path, classes_path(path))
    assert '0..3' in message and '3 classes' in message
    # an explicit count wins over the file beside
    assert build(make, path, num_classes=4).info.max_label == 3
    assert_one_line_error(lambda p: build(make, p, num_classes=2), path)


BAD_CLASS_LISTS = {
    'not json': '{"classes": ["a", "b"',
    'binary': b'\xff\xd8\xff\xe0 not text',
    'bare list': '["a", "b", "c", "d"]',
    'numbers': '{"classes": [0, 1, 2, 3]}',
    'empty': '{"classes": []}',
    'duplicate': '{"classes": ["a", "b", "a", "c"]}',
    'names short': '{"classes": ["a", "b", "c", "d"], "names": ["x"]}',
}


@pytest.mark.parametrize('kind', BAD_CLASS_LISTS)
def test_a_malformed_class_list(good, tmp_path, kind):
    path = copy_beton(good, tmp_path / 'bad.beton')
    content = BAD_CLASS_LISTS[kind]
    write = classes_path(path).write_bytes if isinstance(content, bytes) else \
        classes_path(path).write_text
    write(content)
    assert_one_line_error(load_classes, classes_path(path))
    assert_one_line_error(lambda p: build('train', p), path, classes_path(path))


def test_a_beton_without_a_class_list_is_checked_alone(good, tmp_path):
    path = tmp_path / 'bare.beton'
    shutil.copyfile(good, path)
    assert build('val', path).info.num_samples == 48
    assert_one_line_error(lambda p: build('val', p, num_classes=3), path)


def _fake_imagenet_beton(path, samples, image_bytes=1000):
    """The parts of a ``samples``-image .beton the check reads, laid out as ffcv lays
    them; the image data (``image_bytes`` each) is a hole in a sparse file."""
    _empty_beton(path)
    with open(path, 'r+b') as handle:
        start = handle.seek(0, 2)
        record = np.dtype([('image', RGBImageField().metadata_type), ('label', '<i8')],
                          align=True)
        metadata = np.zeros(samples, dtype=record)
        metadata['label'] = np.arange(samples) % 1000
        data_start = start + metadata.nbytes
        table = np.zeros(samples, dtype=ALLOC_TABLE_TYPE)
        table['sample_id'] = np.arange(samples)
        table['size'] = image_bytes
        table['ptr'] = data_start + table['size'] * np.arange(samples, dtype=np.uint64)
        table_start = int(table['ptr'][-1] + table['size'][-1])
        handle.write(metadata.tobytes())
        handle.seek(table_start)
        handle.write(table.tobytes())
        handle.seek(0)
        handle.write(np.array([(CURRENT_VERSION, 2, 1 << 21, samples, table_start)],
                              dtype=HeaderType).tobytes())
    return path


def test_the_check_reads_little_and_is_quick(tmp_path):
    """100k images (a thirteenth of ImageNet's train split): the check reads 4.8 MB
    of metadata and allocation table, and takes about a millisecond."""
    path = _fake_imagenet_beton(tmp_path / 'big.beton', 100_000)
    start = time.perf_counter()
    info = check_beton(path, num_classes=1000)
    assert time.perf_counter() - start < 2.0
    assert info.num_samples == 100_000 and info.max_label == 999
    with open(path, 'r+b') as handle:  # lose the last table entry
        handle.truncate(info.size - ALLOC_TABLE_TYPE.itemsize)
    with pytest.raises(DatasetError, match='99999 of its 100000 images'):
        check_beton(path)


def _train(betons, folder, *extra):
    return subprocess.run([sys.executable, 'train_imagenet.py', '--config',
                           'rn18_cpu_demo.yaml', *tiny_args(betons, folder, *extra)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def _bad_train(good_pair, tmp_path, case):
    """(args naming the bad files, the path the error must name) for ``case``."""
    train, val = good_pair
    if case == 'truncated train':
        bad = copy_beton(train, tmp_path / 'cut.beton')
        bad.write_bytes(train.read_bytes()[:train.stat().st_size // 2])
        return (bad, val), bad
    if case == 'jpeg as val':
        bad = copy_beton(val, tmp_path / 'photo.beton')
        _jpeg(bad)
        return (train, bad), bad
    if case == 'empty val':
        bad = copy_beton(val, tmp_path / 'empty.beton')
        _empty_beton(bad)
        return (train, bad), bad
    # both class lists agree (the trainer checks that first) but are one class short
    few = ['a', 'b', 'c']
    pair = (copy_beton(train, tmp_path / 'train.beton', few),
            copy_beton(val, tmp_path / 'val.beton', few))
    if case == 'class list too short':
        return pair, classes_path(pair[0])
    classes_path(pair[0]).write_text('{"classes": ["a", "b"')
    return pair, classes_path(pair[0])


# 6-12 s each (a fresh interpreter imports torch and ffcv): one runs by default
@pytest.mark.parametrize('case', ['truncated train', *(
    pytest.param(case, marks=pytest.mark.slow) for case in
    ('jpeg as val', 'class list too short', 'empty val', 'class list not json'))])
def test_train_imagenet_exits_2_with_one_line(betons, tmp_path, case):
    pair, named = _bad_train(betons, tmp_path, case)
    folder = tmp_path / 'run'
    done = _train(pair, folder)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and str(named) in lines[0], \
        done.stderr[-3000:]
    assert not folder.exists()  # stopped before the run folder, so before any step
