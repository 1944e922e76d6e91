"""Storage presets and records (data/write/storage.py): settings a mode ignores do not
count, a preset names what it writes and which explicit settings contradict it, the
writer records the storage beside the .beton and it reads back (none for an older or
replaced file), and the note for a run on other storage."""
import json

import numpy as np
import pytest
from PIL import Image

from ffcv_imagenet.data.folders import DatasetError
from ffcv_imagenet.data.write.storage import (PRESETS, Storage, StorageRecord, find_preset,
                                              read_storage, record_json, storage_note,
                                              storage_path)
from ffcv_imagenet.data.write.writer import write_beton


def test_settings_a_mode_ignores_do_not_change_the_storage():
    assert Storage.of(256, 'jpg', 0.3, 90) == Storage.of(256, 'jpg', 0.5, 90)
    assert Storage.of(256, 'raw', 0.3, 75) == Storage.of(256, 'raw', 0.5, 90)
    assert Storage.of(256, 'proportion', 0.3, 90) != Storage.of(256, 'proportion', 0.5, 90)
    assert Storage.of(256, 'jpg', 0.5, 80) != Storage.of(256, 'jpg', 0.5, 90)
    assert Storage.of(500, 'jpg', 0.5, 90) != Storage.of(256, 'jpg', 0.5, 90)
    assert Storage.of(256, 'smart', 0.5, 90, 100) != Storage.of(256, 'smart', 0.5, 90, 200)


def test_descriptions_name_size_mode_and_quality():
    assert find_preset('rn50-published').storage.describe() == \
        '500 px, proportion 0.5, quality 90'
    assert find_preset('rn18-published').storage.describe() == \
        '400 px, proportion 0.1, quality 90'
    assert find_preset('fast-256').storage.describe() == '256 px, jpg, quality 90'
    assert Storage.of(0, 'raw', 0.5, 90).describe() == 'full size, raw'
    assert Storage.of(64, 'smart', 0.5, 80, 5000).describe() == \
        '64 px, smart above 5000 bytes, quality 80'


def test_an_explicit_setting_conflicts_only_when_it_stores_something_else():
    rn50 = find_preset('rn50-published')
    assert rn50.conflicts({'max_resolution': 256, 'jpeg_quality': 90}) == [
        ('max_resolution', 256, 500)]
    assert rn50.conflicts({'compress_probability': 0.1}) == [
        ('compress_probability', 0.1, 0.5)]
    assert rn50.conflicts({key: getattr(rn50, key) for key in rn50.settings()}) == []
    fast = find_preset('fast-256')
    assert fast.conflicts({'compress_probability': 0.3}) == []  # jpg: every image a JPEG
    assert fast.conflicts({'write_mode': 'proportion'}) == [
        ('write_mode', 'proportion', 'jpg')]
    assert 'compress_probability' not in fast.settings()


def test_an_unknown_preset_is_one_line_listing_the_known_ones():
    with pytest.raises(ValueError) as err:
        find_preset('rn50')
    assert str(err.value) == ("unknown storage preset 'rn50' (known: rn50-published, "
                              "rn18-published, fast-256)")
    assert list(PRESETS) == ['rn50-published', 'rn18-published', 'fast-256']


# --- the record beside the .beton --------------------------------------------------------

@pytest.fixture
def images(tmp_path):
    """(samples, classes): four 300 x 200 noisy JPEGs in two classes."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(4):
        path = tmp_path / f'{i}.JPEG'
        Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(path)
        samples.append((str(path), i % 2))
    return samples, ['a', 'b']


def test_the_writer_records_the_preset_and_the_settings(images, tmp_path):
    samples, classes = images
    out = tmp_path / 'fast.beton'
    write_beton(samples, out, classes, num_workers=1, preset='fast-256',
                **find_preset('fast-256').settings())
    assert read_storage(out) == StorageRecord(find_preset('fast-256').storage, 'fast-256',
                                              'given')
    plain = tmp_path / 'plain.beton'
    write_beton(samples, plain, classes, num_workers=1, max_resolution=128,
                write_mode='proportion', compress_probability=0.25, jpeg_quality=70)
    assert read_storage(plain) == StorageRecord(Storage(128, 'proportion', 0.25, 70), None,
                                                'given')
    shuffled = tmp_path / 'shuffled.beton'
    write_beton(samples, shuffled, classes, num_workers=1, shuffle_seed=7)
    assert read_storage(shuffled)[2:] == ('shuffled', 7)
    assert json.loads(storage_path(plain).read_text())['beton_bytes'] == plain.stat().st_size


def test_a_preset_the_settings_contradict_is_refused_and_nothing_written(images, tmp_path):
    samples, classes = images
    out = tmp_path / 'x.beton'
    with pytest.raises(ValueError, match='preset rn50-published writes 500 px, proportion '
                                         '0.5, quality 90, not 256 px, jpg, quality 90'):
        write_beton(samples, out, classes, num_workers=1, preset='rn50-published')
    assert list(tmp_path.glob('x.beton*')) == []


def test_a_beton_without_a_record_or_replaced_since_has_none(tmp_path):
    beton = tmp_path / 'old.beton'
    beton.write_bytes(b'0' * 100)
    assert read_storage(beton) is None  # written before records existed
    storage = find_preset('fast-256').storage
    storage_path(beton).write_text(record_json(storage, 'fast-256', 100))
    assert read_storage(beton) == StorageRecord(storage, 'fast-256', 'given')
    beton.write_bytes(b'0' * 101)  # replaced by another writer, the record left behind
    assert read_storage(beton) is None


def test_an_unreadable_record_is_one_line_naming_it(tmp_path):
    beton = tmp_path / 'x.beton'
    beton.write_bytes(b'0')
    storage_path(beton).write_text('{"version": 1, "max_resolution": 256}')
    with pytest.raises(DatasetError, match=rf"storage record {storage_path(beton)} is "
                                           r"unreadable \(KeyError: 'write_mode'\)") as err:
        read_storage(beton)
    assert '\n' not in str(err.value)


# --- the note for a run on other storage -------------------------------------------------

def test_the_note_says_what_each_beton_holds_against_the_preset():
    rn50 = find_preset('rn50-published')
    same = StorageRecord(rn50.storage, None)
    fast = StorageRecord(find_preset('fast-256').storage, 'fast-256')
    assert storage_note(rn50, {'t.beton': same, 'v.beton': same}, 'the recipe') is None
    assert storage_note(rn50, {'t.beton': fast, 'v.beton': fast}, 'the recipe') == (
        'note: the recipe expects storage rn50-published (500 px, proportion 0.5, quality '
        '90); t.beton and v.beton were written with 256 px, jpg, quality 90')
    assert storage_note(rn50, {'t.beton': fast, 'v.beton': same}, 'the recipe') == (
        'note: the recipe expects storage rn50-published (500 px, proportion 0.5, quality '
        '90); t.beton was written with 256 px, jpg, quality 90')
    assert storage_note(rn50, {'t.beton': same, 'v.beton': None}, 'the recipe') == (
        'note: the recipe expects storage rn50-published (500 px, proportion 0.5, quality '
        '90); v.beton has no storage record, so its storage is unknown')
