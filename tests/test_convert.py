"""The conversion command (write_datasets.py, ``python -m ffcv_imagenet convert``) end
to end: labels and the class file round trip, a stratified subset, a folder of broken and
exotic files named .JPEG converted as a user would (every bad file skipped and reported
with its reason, every odd but valid one stored with its label, nothing the C libraries
print reaching the terminal, strict mode stopping at the first), the storage presets
(each writes and records what it says; a contradicting key or an unknown name is one
line), one-line errors, an interrupted conversion, and Tiny ImageNet's layout through to
a training run."""
import json
import re
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
from PIL import Image

import train_imagenet
import write_datasets
from ffcv_imagenet.cli.config import ConfigError, parse_config
from ffcv_imagenet.cli.convert import storage_settings
from ffcv_imagenet.data.folders import DatasetError, list_tree
from ffcv_imagenet.data.read.beton import read_image_table
from ffcv_imagenet.data.synthetic import class_name, generate
from ffcv_imagenet.data.write.storage import Storage, StorageRecord, find_preset, read_storage
from ffcv_imagenet.data.write.writer import skipped_path
from ffcv_imagenet.training.logs import read_log
from tests.support import (CHATTY, ROOT, bad_file_bytes, bad_files, good_file_bytes,
                           odd_images, skipped_reasons, stored_labels_and_sizes)


def beton_labels(path):
    loader = Loader(str(path), batch_size=16, num_workers=1, order=OrderOption.SEQUENTIAL,
                    drop_last=False, pipelines={'image': None, 'label': [IntDecoder(), ToTensor()]})
    return np.concatenate([labels.numpy().ravel() for (labels,) in loader]).tolist()


def convert(*args):
    return write_datasets.main([f'--cfg.{a}' for a in args])


def test_labels_round_trip_and_class_file(synth, tmp_path):
    out = tmp_path / 'train.beton'
    assert convert(f'data_dir={synth}/train', f'write_path={out}', 'max_resolution=64',
                   'keep_order=1') == 0
    samples, classes = list_tree(synth / 'train')
    assert beton_labels(out) == [label for _, label in samples]
    saved = json.loads(Path(f'{out}.classes.json').read_text())
    assert saved['classes'] == classes
    assert saved['names'][0] == 'red stripes'  # from LOC_synset_mapping.txt
    assert not skipped_path(out).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]  # no temp files

    val = tmp_path / 'val.beton'
    convert('split=val', f'data_dir={synth}/val', f'write_path={val}', 'max_resolution=64',
            f'classes={out}.classes.json', 'keep_order=1')
    assert beton_labels(val) == [label for _, label in list_tree(synth / 'val', classes)[0]]


def listed_labels_and_sizes(root):
    """[(label, (height, width))] of a class tree's images, in listing order."""
    samples, _ = list_tree(root)
    return [(label, Image.open(path).size[::-1]) for path, label in samples]


def test_samples_are_stored_shuffled_by_seed_each_with_its_label(synth, tmp_path):
    listed = listed_labels_and_sizes(synth / 'train')  # max_resolution=0: sizes kept
    stored = {}
    for name, flags in (('default', []), ('seed 5', ['--shuffle', '5']),
                        ('again', ['--shuffle=5']), ('kept', ['--keep-order'])):
        out = tmp_path / f'{name}.beton'
        assert write_datasets.main([f'--cfg.data_dir={synth}/train', f'--cfg.write_path={out}',
                                    '--cfg.max_resolution=0', *flags]) == 0
        stored[name] = stored_labels_and_sizes(out)
        assert sorted(stored[name]) == sorted(listed)  # the same images, labels with them
        record = read_storage(out)
        assert (record.sample_order, record.shuffle_seed) == (
            ('given', None) if name == 'kept' else ('shuffled', 0 if name == 'default' else 5))
    assert stored['kept'] == listed
    assert stored['default'] != listed and stored['seed 5'] != stored['default']
    assert stored['again'] == stored['seed 5']  # a function of the seed


def test_a_shuffle_seed_beside_keep_order_is_refused_in_one_line(synth, tmp_path):
    out = tmp_path / 'both.beton'
    with pytest.raises(ConfigError, match='--cfg.shuffle=3 contradicts --cfg.keep_order=1'):
        write_datasets.main([f'--cfg.data_dir={synth}/train', f'--cfg.write_path={out}',
                             '--shuffle', '3', '--keep-order'])
    assert not out.exists()


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
    assert sorted(beton_labels(out)) == [0] * 3 + [1] * len(odd)
    report = dict(line.split('\t') for line in skipped_path(out).read_text().splitlines())
    assert sorted(report) == sorted(str(p) for p in bad.values())
    assert all(reason for reason in report.values())


def test_strict_mode_fails_naming_the_first_bad_file_and_writes_nothing(messy_tree, tmp_path):
    root, bad, _ = messy_tree
    out = tmp_path / 'strict.beton'
    with pytest.raises(DatasetError, match='unreadable image .*empty.JPEG'):
        convert(f'data_dir={root}', f'write_path={out}', 'strict=1')
    assert list(tmp_path.glob('strict.beton*')) == [] and not list(tmp_path.glob('.strict*'))


# --- storage presets ---------------------------------------------------------------------

@pytest.mark.parametrize('name, flags', [
    ('fast-256', ['--preset', 'fast-256', '--cfg.max_resolution=256']),  # agreeing key
    ('rn50-published', ['--preset=rn50-published']),
    ('rn18-published', ['--cfg.preset=rn18-published', '--cfg.write_mode=proportion']),
])
def test_a_preset_writes_and_records_what_it_says(synth, tmp_path, name, flags):
    out = tmp_path / f'{name}.beton'
    assert write_datasets.main([f'--cfg.data_dir={synth}/train', f'--cfg.write_path={out}',
                                *flags]) == 0
    preset = find_preset(name)
    assert read_storage(out) == StorageRecord(preset.storage, name, 'shuffled', 0)
    table = read_image_table(out)
    jpeg, raw = int((table['mode'] == 0).sum()), int((table['mode'] == 1).sum())
    if preset.write_mode == 'jpg':
        assert raw == 0
    elif preset.compress_probability == 0.5:
        assert jpeg and raw  # 48 images: all of one kind 1 time in 10^14
    else:
        assert jpeg < raw  # 0.1: half or more JPEG 1 time in 10^10
    sources = [max(Image.open(path).size) for path, _ in list_tree(synth / 'train')[0]]
    assert max(sources) >= preset.max_resolution > min(sources)  # sizes on both sides
    stored = [max(int(image['height']), int(image['width'])) for image in table]
    # the longest side, down to max_resolution (ffcv's rounding can take a pixel off)
    expected = [min(side, preset.max_resolution) for side in sources]
    # (in the shuffled order the samples are stored in, recorded as its seed)
    order = np.random.default_rng(0).permutation(len(expected))
    assert all(0 <= expected[i] - got <= 1 for i, got in zip(order, stored, strict=True))


def test_fast_256_stores_what_the_defaults_do():
    """So that make demo's --preset fast-256 writes what it wrote before the presets."""
    config = parse_config('t', ['--cfg.data_dir=d', '--cfg.write_path=w'], ('cfg',))
    settings, preset = storage_settings(config)
    assert preset is None
    assert Storage.of(**settings) == find_preset('fast-256').storage


@pytest.mark.parametrize('flags, message', [
    (['--preset', 'rn50-published', '--cfg.max_resolution=256'],
     'error: --cfg.max_resolution=256 contradicts --cfg.preset=rn50-published, which sets '
     'max_resolution=500; give one or the other'),
    (['--preset=fast-256', '--cfg.write_mode=proportion'],
     'error: --cfg.write_mode=proportion contradicts --cfg.preset=fast-256, which sets '
     'write_mode=jpg; give one or the other'),
    (['--cfg.preset=rn50'],
     "error: cfg.preset: unknown storage preset 'rn50' (known: rn50-published, "
     "rn18-published, fast-256)"),
])
def test_a_contradicting_key_or_unknown_preset_is_one_line_and_writes_nothing(
        synth, tmp_path, capsys, flags, message):
    assert write_datasets.run([f'--cfg.data_dir={synth}/train',
                               f'--cfg.write_path={tmp_path / "x.beton"}', *flags]) == 2
    assert capsys.readouterr().err == message + '\n'
    assert list(tmp_path.iterdir()) == []


# --- a folder of broken and exotic files, converted in a subprocess ----------------------

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


def expected(root, good):
    """What a .beton of ``root`` must hold: the good files, in listing order."""
    samples, _ = list_tree(root)
    return [(label, good[path]) for path, label in samples if path in good]


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
    reasons = skipped_reasons(out)
    assert set(reasons) == bad
    assert all(reason.strip() for reason in reasons.values())
    [dds] = [reason for path, reason in reasons.items() if 'dds_dxgi_93' in path]
    assert dds.startswith('NotImplementedError')  # what crashed the old checking pool
    assert sorted(stored_labels_and_sizes(out)) == sorted(expected(root, good))
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


# --- one-line errors and an interrupted conversion ---------------------------------------

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


# --- Tiny ImageNet's layout, converted and trained with its recipe -----------------------

@pytest.mark.slow
def test_tiny_imagenet_layout_converts_and_trains_with_its_recipe(tmp_path):
    root = generate(tmp_path / 'tiny-imagenet-200', classes=4, train_per_class=16,
                    val_per_class=4, layout='tiny', workers=2)
    train, val = tmp_path / 'tiny_train.beton', tmp_path / 'tiny_val.beton'
    assert convert('split=train', f'data_dir={root / "train"}', f'write_path={train}',
                   'max_resolution=0') == 0
    assert convert('split=val', f'data_dir={root / "val"}', f'write_path={val}',
                   'max_resolution=0', f'classes={train}.classes.json') == 0
    listing = json.loads(Path(f'{train}.classes.json').read_text())
    assert listing['names'] == [class_name(c) for c in range(4)]  # from words.txt
    from ffcv_imagenet.data.read.beton import check_beton
    assert check_beton(train, 4).num_samples == 64
    assert check_beton(val, 4).num_samples == 16
    folder = tmp_path / 'run'
    assert train_imagenet.main([
        '-C', 'rn50_tiny_imagenet', f'--data.train_dataset={train}',
        f'--data.val_dataset={val}', '--data.num_workers=1', '--training.device=cpu',
        '--training.batch_size=16', '--validation.batch_size=16', '--training.epochs=3',
        '--training.stop_after=1', '--logging.progress=0', f'--logging.folder={folder}']) == 0
    epoch, = read_log(folder, 'epoch')
    assert epoch['resolution'] == 64 and epoch['iteration'] == 4
    assert 0 <= epoch['val_top1'] <= 1
