"""Helpers shared by the test files; the fixtures are in conftest.py.

- ``ROOT``: the repository root (train_imagenet.py and write_datasets.py live there, and
  the subprocesses of the tests run from it); ``RECIPES``: the shipped recipes
- tiny training runs: ``tiny_args``, ``train_tiny``, ``FEATURES``, ``STAGED``,
  ``weights``, ``assert_same_weights``; a run with one failing rank: ``fail_one_rank``,
  run as ``python -m tests.support ARGS`` (under torchrun: ``-m tests.support ARGS``)
- pieces of a run: ``trained_parts``, ``CHECKPOINT_META``, ``CHECKPOINT_STATE``,
  ``model_checkpoint`` (a ResNet-18 checkpoint without training), ``random_batches``,
  ``free_port``
- files a conversion meets: ``odd_images`` and ``bad_files`` (a few, written to a
  folder); ``bad_file_bytes``, ``good_file_bytes``, ``CHATTY``, ``png_declaring`` and
  ``dds_dx10`` (a corpus of broken and exotic files built from bytes)
- ``.beton`` files: ``copy_beton``, ``empty_beton``, ``jpeg_file``,
  ``stored_labels_and_sizes``, ``skipped_reasons``
- torchvision's standard evaluation worked out by hand: ``EVAL_RESIZE``, ``EVAL_CROP``,
  ``by_hand``, ``hits_by_hand``
- a run's log for the plots: ``write_run_log``, ``assert_plot_pngs``; a sweep's
  arguments: ``sweep_args``
- the offline wheelhouse of .ci/wheelhouse.sh: ``Wheelhouse``,
  ``build_or_reuse_wheelhouse``, ``wheel_metadata``, ``requirement_names``
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ffcv_imagenet.data.folders import classes_path
from ffcv_imagenet.data.write.writer import skipped_path
from ffcv_imagenet.training.checkpoint import TrainState, load_checkpoint
from ffcv_imagenet.training.distributed import free_port  # noqa: F401 (tests import it here)
from ffcv_imagenet.training.ema import ModelEMA
from ffcv_imagenet.training.logs import RunLog

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / 'rn50_configs').glob('*.yaml'))


# --- tiny training runs ------------------------------------------------------------------

def tiny_args(betons, folder, *extra):
    """Command-line arguments of a tiny training run: ResNet-18 at 32 -> 64 px,
    batch 8, 2 epochs, on the CPU, one decoding thread: numba then compiles the
    decoder's serial loop, not its parallel one, and the run takes about 0.6x the time
    (BENCHMARKS.md, "Test-suite time"); the loaders' tests and
    ``test_same_seed_same_run`` decode on two."""
    train, val = betons
    return [f'--data.train_dataset={train}', f'--data.val_dataset={val}',
            '--data.num_workers=1', '--model.arch=resnet18', '--resolution.min_res=32',
            '--resolution.max_res=64', '--resolution.start_ramp=0',
            '--resolution.end_ramp=2', '--validation.resolution=32',
            '--validation.batch_size=8', '--training.batch_size=8', '--training.epochs=2',
            '--training.device=cpu', '--lr.lr=0.4', '--lr.peak_epoch=1',
            '--logging.progress=0', '--logging.log_every=2', f'--logging.folder={folder}',
            *extra]


FEATURES = ('--ema.enabled=1', '--ema.decay=0.9', '--ema.warmup_steps=2',
            '--checkpoint.best_metric=ema_val_top1', '--mix.mixup_alpha=0.2',
            '--mix.cutmix_alpha=1.0', '--model.drop_path_rate=0.1',
            '--lr.schedule=onecycle', '--lr.pct_start=0.3', '--logging.plot=1')

STAGED = ('--resolution.stages=0:32:16,1:48:8', '--training.batch_size=999')


def train_tiny(betons, folder, *extra):
    """A tiny run (``tiny_args``) in ``folder``, which it returns; it must succeed."""
    import train_imagenet
    assert train_imagenet.main(tiny_args(betons, folder, *extra)) == 0
    return folder


def weights(path):
    """The model weights of the checkpoint at ``path``."""
    return load_checkpoint(path)['model']


def assert_same_weights(a, b):
    """Two state dicts hold the same keys and exactly the same tensors."""
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def fail_one_rank(argv):
    """train_imagenet.py with one rank failing at one step, as an out-of-memory error
    or a bad file in that rank's shard would: ``FAIL_RANK`` and ``FAIL_STEP`` (1-based)
    pick where. For the test that a failing rank does not hang the others; run as
    ``python -m tests.support ARGS``."""
    from ffcv_imagenet.cli.train import run
    from ffcv_imagenet.training import loop

    real_step, steps = loop.train_step, [0]

    def failing_step(*args, **kwargs):
        steps[0] += 1
        if (os.environ['RANK'] == os.environ['FAIL_RANK']
                and steps[0] == int(os.environ['FAIL_STEP'])):
            raise RuntimeError(f"simulated out of memory in rank {os.environ['RANK']}")
        return real_step(*args, **kwargs)

    loop.train_step = failing_step
    return run(argv)


# --- pieces of a run: a model, optimizer, scaler and EMA after a step; batches -----------

CHECKPOINT_META = {'arch': 'tiny', 'num_classes': 3, 'classes': ['a', 'b', 'c'],
                   'config': {'x': 1}}


def trained_parts(seed=0):
    """A model, optimizer (with momentum state), enabled scaler and EMA after a step."""
    torch.manual_seed(seed)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler('cpu', init_scale=512.0 * (seed + 1))
    ema = ModelEMA(model, 0.5)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    ema.update(model, 1)
    return model, optimizer, scaler, ema


CHECKPOINT_STATE = TrainState(epoch=3, iteration=42, best_top1=0.625,
                              metrics={'val_top1': 0.5}, best_epoch=2, stopped_early=True,
                              step=7, partial=[1.5, 2.0, 8.0, 3.25])


def model_checkpoint(path, classes, *, blurpool=True, ema=True, resolution=32, seed=0,
                     names=None):
    """Writes, without training, a checkpoint of a ResNet-18 over ``classes`` as the
    trainer writes it after one epoch (random weights, BN statistics moved off their
    defaults so that eval mode matters; the config holds the model's and validation's
    keys). With ``ema``, the EMA's weights differ from the raw ones. Returns ``path``."""
    from ffcv_imagenet.training.checkpoint import checkpoint_state, save_checkpoint
    from ffcv_imagenet.training.models import build_model
    torch.manual_seed(seed)
    network = build_model('resnet18', len(classes), blurpool=blurpool)
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    config = {'model.arch': 'resnet18', 'model.blurpool': int(blurpool), 'model.head': 'fc',
              'validation.resolution': resolution, 'validation.crop_ratio': 0.875,
              'validation.tta': 1, 'data.train_dataset': '/nonexistent/train.beton'}
    meta = {'arch': 'resnet18', 'num_classes': len(classes), 'classes': list(classes),
            'config': config}
    from ffcv_imagenet.training.optim import param_groups
    optimizer = torch.optim.SGD(param_groups(network, 5e-5), lr=0.1, momentum=0.9)
    saved = checkpoint_state(network, optimizer, torch.amp.GradScaler('cpu', enabled=False),
                             TrainState(epoch=1, iteration=6), meta)
    if ema:
        saved['ema'] = {'module': {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point()
                                   else v for k, v in network.state_dict().items()}}
    if names is not None:
        saved['names'] = list(names)
    save_checkpoint(saved, path)
    return Path(path)


def random_batches(count=3, size=4, classes=10, seed=0):
    """``count`` batches of random 32 x 32 images and labels."""
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 32, 32, generator=generator),
             torch.randint(0, classes, (size,), generator=generator)) for _ in range(count)]


# --- files a conversion meets: a few odd and bad ones ------------------------------------

GRADIENT = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (30, 1))  # 30 x 40


def _save(path, image, fmt, **kwargs):
    image.save(path, format=fmt, **kwargs)
    return path


def odd_images(folder):
    """Valid files that a naive loader gets wrong; name -> (path, expected (h, w))."""
    rgb = Image.fromarray(np.stack([GRADIENT] * 3, -1))
    palette = rgb.convert('P', palette=Image.Palette.ADAPTIVE)
    palette.info['transparency'] = 0
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    sixteen = Image.fromarray(GRADIENT.astype(np.uint16) * 257)
    return {
        'gray': (_save(folder / 'gray.JPEG', Image.fromarray(GRADIENT), 'JPEG'), (30, 40)),
        'cmyk': (_save(folder / 'cmyk.JPEG', rgb.convert('CMYK'), 'JPEG'), (30, 40)),
        'palette': (_save(folder / 'palette.png', palette, 'PNG'), (30, 40)),
        'alpha': (_save(folder / 'alpha.png', rgb.convert('RGBA'), 'PNG'), (30, 40)),
        'gray_alpha': (_save(folder / 'la.png', Image.fromarray(GRADIENT).convert('LA'),
                             'PNG'), (30, 40)),
        'sixteen_bit': (_save(folder / 'sixteen.png', sixteen, 'PNG'), (30, 40)),
        'exif_rotated': (_save(folder / 'rotated.JPEG', rgb, 'JPEG', exif=exif), (40, 30)),
        'png_named_jpeg': (_save(folder / 'png.JPEG', rgb, 'PNG'), (30, 40)),
    }


def bad_files(folder):
    """Files no reader can decode; name -> path."""
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        good, 'JPEG')
    files = {'truncated': good.getvalue()[: len(good.getvalue()) // 2],
             'text': b'this is not an image\n', 'empty': b''}
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.JPEG"
        paths[name].write_bytes(data)
    return paths


# --- a corpus of broken and exotic files, all named .JPEG, built from bytes --------------

# What a scraped or inherited ImageNet-like folder holds besides photos. The bad files
# are files no reader can turn into pixels (several of them make libtiff print to
# stderr); the good files are valid images in unusual formats and modes that a
# conversion must keep.

RNG_SEED = 7


def _encoded(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _photo(height=48, width=64):
    rng = np.random.default_rng(RNG_SEED)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), np.uint8))


def _png_chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data
            + struct.pack('>I', zlib.crc32(kind + data)))


def png_declaring(width, height):
    """A PNG whose header declares ``width`` x ``height`` RGB pixels but holds almost none."""
    header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + _png_chunk(b'IHDR', header)
            + _png_chunk(b'IDAT', zlib.compress(b'\0' * 64)) + _png_chunk(b'IEND', b''))


def dds_dx10(dxgi_format, side=16):
    """A DDS file with a DX10 header naming ``dxgi_format`` (93: B8G8R8X8_UNORM_SRGB,
    which Pillow identifies but cannot decode)."""
    pixel_format = struct.pack('<4I', 32, 0x4, int.from_bytes(b'DX10', 'little'), 0) + bytes(16)
    header = (struct.pack('<7I', 124, 0x1007, side, side, 0, 0, 0) + bytes(44) + pixel_format
              + struct.pack('<4I', 0x1000, 0, 0, 0) + bytes(4))
    dx10 = struct.pack('<5I', dxgi_format, 3, 0, 1, 0)
    return b'DDS ' + header + dx10 + bytes(side * side * 4)


def tiff_claiming_compression(value):
    """A deflate-compressed RGB TIFF whose compression tag is rewritten to ``value``:
    libtiff then fails on data it cannot decode, printing its complaint to fd 2."""
    data = bytearray(_encoded(_photo(), 'TIFF', compression='tiff_adobe_deflate'))
    assert data[:2] == b'II'
    ifd = struct.unpack('<I', data[4:8])[0]
    for entry in range(struct.unpack('<H', data[ifd:ifd + 2])[0]):
        at = ifd + 2 + 12 * entry
        if struct.unpack('<H', data[at:at + 2])[0] == 259:  # Compression, a SHORT
            data[at + 8:at + 10] = struct.pack('<H', value)
            return bytes(data)
    raise AssertionError('no compression tag')


def tiff_with_corrupt_strip():
    """A deflate TIFF whose strip is overwritten with zeros (libtiff: ZIPDecode error)."""
    data = _encoded(_photo(), 'TIFF', compression='tiff_adobe_deflate')
    image = Image.open(io.BytesIO(data))
    offset, length = image.tag_v2[273][0], image.tag_v2[279][0]
    return data[:offset + 2] + bytes(length - 2) + data[offset + length:]


def _half(data):
    return data[:len(data) // 2]


def bad_file_bytes():
    """name -> bytes of a file that cannot be read as an image."""
    photo = _photo()
    rng = np.random.default_rng(RNG_SEED)
    return {
        'truncated_jpeg': _half(_encoded(photo, 'JPEG', quality=95)),
        'truncated_png': _half(_encoded(photo, 'PNG')),
        'truncated_tiff': _half(_encoded(photo, 'TIFF')),
        'truncated_gif': _half(_encoded(photo, 'GIF')),
        'truncated_webp': _half(_encoded(photo, 'WEBP')),
        'zero_bytes': b'',
        'random_bytes': rng.integers(0, 256, 4096, np.uint8).tobytes(),
        'text': b'<html><body>404 Not Found</body></html>\n',
        'huge_declared_png': png_declaring(100_000, 100_000),
        'dds_dxgi_93': dds_dx10(93),
        'tiff_thunderscan': tiff_claiming_compression(32809),
        'tiff_sgilog': tiff_claiming_compression(34676),
        'tiff_jpeg_of_deflate': tiff_claiming_compression(7),
        'tiff_old_jpeg': tiff_claiming_compression(6),
        'tiff_corrupt_deflate': tiff_with_corrupt_strip(),
    }


# files whose decoding makes libtiff print to fd 2 (what must not reach the terminal)
CHATTY = ('tiff_thunderscan', 'tiff_sgilog', 'tiff_jpeg_of_deflate', 'tiff_old_jpeg',
          'tiff_corrupt_deflate')


def good_file_bytes():
    """name -> (bytes, (height, width)) of a valid image in an unusual format or mode."""
    photo = _photo()
    gray = photo.convert('L')
    sixteen = Image.fromarray((np.asarray(gray, np.uint16) * 257))
    shape = (photo.height, photo.width)
    return {
        'gray_jpeg': (_encoded(gray, 'JPEG'), shape),
        'cmyk_jpeg': (_encoded(photo.convert('CMYK'), 'JPEG'), shape),
        'palette_png': (_encoded(photo.convert('P', palette=Image.Palette.ADAPTIVE), 'PNG'),
                        shape),
        'sixteen_bit_png': (_encoded(sixteen, 'PNG'), shape),
        'sixteen_bit_tiff': (_encoded(sixteen, 'TIFF'), shape),
        'bilevel_tiff_group4': (_encoded(gray.convert('1'), 'TIFF', compression='group4'),
                                shape),
        'lzw_tiff': (_encoded(photo, 'TIFF', compression='tiff_lzw'), shape),
        'png_named_jpeg': (_encoded(photo, 'PNG'), shape),
        'rgba_webp': (_encoded(photo.convert('RGBA'), 'WEBP', lossless=True), shape),
        'gif': (_encoded(photo, 'GIF'), shape),
        'bmp': (_encoded(photo, 'BMP'), shape),
        'one_pixel': (_encoded(Image.new('RGB', (1, 1), (9, 9, 9)), 'PNG'), (1, 1)),
    }


# --- .beton files ------------------------------------------------------------------------

def copy_beton(source, dest, classes=None):
    """``source`` and its class list copied to ``dest``; ``classes`` replaces the list."""
    shutil.copyfile(source, dest)
    shutil.copyfile(classes_path(source), classes_path(dest))
    if classes is not None:
        classes_path(dest).write_text(json.dumps({'classes': classes}))
    return dest


def empty_beton(path):
    """What ffcv would write for 0 samples: header, descriptors, no metadata, no table."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.types import CURRENT_VERSION, FieldDescType, HeaderType
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


def jpeg_file(path):
    """A JPEG photo at ``path``."""
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(path, format='JPEG')


def stored_labels_and_sizes(beton):
    """[(label, (height, width))] of every image in ``beton``, in order."""
    from ffcv.reader import Reader
    reader = Reader(str(beton))
    image, label = (reader.metadata[f'f{reader.field_names.index(name)}']
                    for name in ('image', 'label'))
    return [(int(lab), (int(img['height']), int(img['width'])))
            for img, lab in zip(image, label)]


def skipped_reasons(beton):
    """{path: reason} of the files the conversion to ``beton`` skipped."""
    return dict(line.split('\t') for line in skipped_path(beton).read_text().splitlines())


# --- torchvision's standard evaluation, worked out by hand -------------------------------

EVAL_RESIZE, EVAL_CROP = 40, 32  # pixels: small, so that the CPU tests stay fast


def by_hand(path, resize=EVAL_RESIZE, crop=EVAL_CROP):
    """(3, crop, crop) float32: the standard evaluation written out with PIL and numpy."""
    from ffcv_imagenet.data.read.decoders import IMAGENET_MEAN, IMAGENET_STD
    image = Image.open(path).convert('RGB')
    width, height = image.size
    # shorter side to `resize`, the longer one scaled and truncated, as torchvision does
    if width <= height:
        size = (resize, int(resize * height / width))
    else:
        size = (int(resize * width / height), resize)
    pixels = np.asarray(image.resize(size, Image.BILINEAR), dtype=np.float32) / 255
    top = int(round((size[1] - crop) / 2))
    left = int(round((size[0] - crop) / 2))
    pixels = pixels[top:top + crop, left:left + crop]
    pixels = (pixels - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def hits_by_hand(model, root, classes, **sizes):
    """(top-1 hits, top-5 hits, images, predicted classes) over the class tree ``root``,
    labels being positions in ``classes``, one image at a time."""
    top1 = top5 = count = 0
    predicted = set()
    model.eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batches of one: more threads only wait on a busy machine
    with torch.no_grad():
        for label, name in enumerate(classes):
            for file in sorted(os.listdir(root / name)):
                logits = model(by_hand(root / name / file, **sizes)[None])[0]
                best = logits.topk(min(5, len(classes))).indices.tolist()
                top1 += best[0] == label
                top5 += label in best
                count += 1
                predicted.add(best[0])
    torch.set_num_threads(threads)
    return top1, top5, count, predicted


# --- a run's log for the plots -----------------------------------------------------------

def _epoch_record(epoch, val=True, **extra):
    record = {'epoch': epoch, 'iteration': 10 * epoch, 'lr': 0.1 / epoch,
              'resolution': 96 + 16 * epoch, 'train_loss': 3.0 / epoch,
              'train_top1': 0.1 * epoch, 'val_loss': None, 'val_top1': None,
              'val_top5': None, 'images_per_sec': 180.0, 'epoch_time': 16.2}
    if val:
        record.update(val_loss=2.5 / epoch, val_top1=0.12 * epoch, val_top5=0.2 * epoch)
    record.update(extra)
    return record


def write_run_log(run_dir, mixing=False):
    """A resumed run's log: epoch 2 logged twice, no validation on epoch 1 or 3,
    EMA validation from epoch 2, and a torn last line (the run is still writing)."""
    log = RunLog(run_dir, enabled=True, echo=False)
    label = {'train_top1_label': 'dominant label'} if mixing else {}
    log.event('start', epochs=5)
    log.event('epoch', **_epoch_record(1, val=False, **label))
    log.event('epoch', **_epoch_record(2, train_loss=9.0, **label))  # crashed before its checkpoint
    log.event('resume', epoch=1)
    log.event('epoch', **_epoch_record(2, ema_val_loss=2.0, ema_val_top1=0.3, ema_val_top5=0.5,
                                       **label))
    log.event('epoch', **_epoch_record(3, val=False, **label))
    log.event('epoch', **_epoch_record(4, ema_val_loss=1.0, ema_val_top1=0.5, ema_val_top5=0.8,
                                       **label))
    with open(run_dir / 'log.jsonl', 'a') as handle:
        handle.write('{"event": "epoch", "epoch": 5, "train_lo')
    return run_dir


def assert_plot_pngs(paths, folder):
    """``paths`` are the plots' PNGs in ``folder``, whole, and nothing else is there."""
    from matplotlib.image import imread

    from ffcv_imagenet.training.plots import PLOTS
    assert [Path(p) for p in paths] == [Path(folder) / f'{name}.png' for name in PLOTS]
    for path in paths:
        assert Path(path).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
        pixels = imread(path)
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    # only the finished PNGs: no temporary files left behind
    assert sorted(p.name for p in Path(folder).iterdir()) == sorted(f'{n}.png' for n in PLOTS)


# --- sweeps ------------------------------------------------------------------------------

def sweep_args(betons, out, *extra):
    """The sweep command's arguments for tiny one-epoch variants in ``out``."""
    fixed = [arg[2:] for arg in tiny_args(betons, 'unused', '--training.epochs=1',
                                          '--resolution.max_res=32',
                                          '--resolution.end_ramp=0', '--lr.peak_epoch=0.5',
                                          '--logging.log_every=1')
             if not arg.startswith('--logging.folder')]
    return ['--out', str(out), *(part for value in fixed for part in ('--set', value)),
            *extra]


# --- the offline wheelhouse of .ci/wheelhouse.sh -----------------------------------------

# As the tests see it: built for the running Python into a temporary folder, or taken
# from $FFCV_IMAGENET_WHEELHOUSE (its raw, unrepaired ffcv wheel then from the work
# folder $FFCV_IMAGENET_WHEELHOUSE_WORK, by default the script's ~/.cache one). The
# fixture ``wheelhouse`` in conftest.py builds it once per test process.

SCRIPT = ROOT / '.ci' / 'wheelhouse.sh'
PYVER = '%d.%d' % sys.version_info[:2]
TAG = 'cp%d%d' % sys.version_info[:2]
# always kept: glibc, the C++ runtime and zlib
BASE_LIBS = ('ld-linux-x86-64.so.2', 'libc.so.6', 'libm.so.6', 'libpthread.so.0', 'libdl.so.2',
             'librt.so.1', 'libutil.so.1', 'libresolv.so.2', 'libstdc++.so.6',
             'libgcc_s.so.1', 'libz.so.1')


@dataclass
class Wheelhouse:
    folder: Path
    work: Path

    def wheels(self) -> list[Path]:
        return sorted(self.folder.glob('*.whl'))

    def ffcv(self) -> Path:
        found = [w for w in self.wheels() if w.name.startswith('ffcv-')]
        assert len(found) == 1, [w.name for w in self.wheels()]
        return found[0]

    def raw_ffcv(self) -> Path:
        found = sorted((self.work / 'raw').glob(f'ffcv-*-{TAG}-{TAG}-linux_x86_64.whl'))
        if not found:
            pytest.fail(f'no raw ffcv wheel for {TAG} in {self.work}/raw: set '
                        'FFCV_IMAGENET_WHEELHOUSE_WORK to the work folder of the build')
        return found[0]


def build_or_reuse_wheelhouse(tmp_path_factory) -> Wheelhouse:
    """The wheelhouse of $FFCV_IMAGENET_WHEELHOUSE when set (built once by CI), else one
    built for the running Python into a temporary folder."""
    given = os.environ.get('FFCV_IMAGENET_WHEELHOUSE')
    if given:
        work = os.environ.get('FFCV_IMAGENET_WHEELHOUSE_WORK') or os.path.join(
            os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'),
            'ffcv_imagenet', f'wheelhouse-{TAG}')
        return Wheelhouse(Path(given).resolve(), Path(work).resolve())
    base = tmp_path_factory.mktemp('wheelhouse')
    folder, work = base / 'wheelhouse', base / 'work'
    env = dict(os.environ, FFCV_IMAGENET_WHEELHOUSE_WORK=str(work))
    built = subprocess.run(['bash', str(SCRIPT), str(folder), PYVER], env=env, cwd=base,
                           capture_output=True, text=True, timeout=1200)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert 'total:' in built.stdout
    return Wheelhouse(folder, work)


def wheel_metadata(wheel: Path) -> tuple[str, list[str], dict[str, bytes]]:
    """(Version, Requires-Dist, {file: bytes}) of a wheel."""
    with zipfile.ZipFile(wheel) as z:
        files = {n: z.read(n) for n in z.namelist() if not n.endswith('/')}
    meta = next(v for k, v in files.items() if re.fullmatch(r'[^/]+\.dist-info/METADATA', k))
    head = meta.decode().partition('\n\n')[0].splitlines()
    version = next(line.split(':', 1)[1].strip() for line in head if line.startswith('Version:'))
    requires = [line.split(':', 1)[1].strip() for line in head
                if line.startswith('Requires-Dist:')]
    return version, requires, files


def requirement_names(requires: list[str]) -> set[str]:
    return {re.split(r'[\s;<>=!~\[(]', r, maxsplit=1)[0].lower().replace('_', '-')
            for r in requires}


if __name__ == '__main__':
    sys.exit(fail_one_rank(sys.argv[1:]))
