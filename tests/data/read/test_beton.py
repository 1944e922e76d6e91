"""Checking a .beton before ffcv opens it (data/read/beton.py): a truncated copy, a file
of another format, missing fields, an empty file or a bad class list stops the loaders
with one line naming the file (DatasetError), never a traceback from inside ffcv; the
check reads little; the labels are read in file order."""
import shutil
import time

import numpy as np
import pytest
from ffcv.fields import FloatField, IntField, RGBImageField
from ffcv.reader import Reader
from ffcv.types import ALLOC_TABLE_TYPE, CURRENT_VERSION, HeaderType
from ffcv.writer import DatasetWriter

from ffcv_imagenet.data.folders import DatasetError, classes_path, list_tree, load_classes
from ffcv_imagenet.data.read.beton import check_beton, check_dataset, read_labels
from ffcv_imagenet.data.read.loaders import train_loader, val_loader
from tests.support import copy_beton, empty_beton, jpeg_file


LOADERS = {'train': train_loader, 'val': val_loader}


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


OTHER_FORMATS = {
    'empty file': lambda path: path.write_bytes(b''),
    'random bytes': lambda path: path.write_bytes(
        np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes()),
    'jpeg': jpeg_file,
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


@pytest.mark.parametrize('make', LOADERS)
def test_an_empty_beton(tmp_path, make):
    path = empty_beton(tmp_path / 'empty.beton')
    message = assert_one_line_error(lambda p: build(make, p), path)
    assert 'no images' in message


def test_the_empty_beton_builder_matches_ffcvs_layout(tmp_path, good):
    # the hand-made header and descriptors agree with a real file's, but for the counts
    made = empty_beton(tmp_path / 'empty.beton').read_bytes()
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
    empty_beton(path)
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


def test_labels_are_read_in_file_order(synth, betons):
    samples, _ = list_tree(synth / 'train')
    labels = read_labels(betons[0])
    assert labels.dtype == np.int64
    assert labels.tolist() == [label for _, label in samples]
    reader = Reader(str(betons[0]))
    assert np.array_equal(labels, reader.metadata[f"f{reader.field_names.index('label')}"])
