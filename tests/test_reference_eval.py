"""torchvision's standard evaluation (shorter side resized, centre crop, ImageNet
normalisation) against a computation by hand: PIL resize and numpy crop, the model
run image by image, hits counted; then through the eval-only command."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import train_imagenet
from ffcv_imagenet.cli.train import STANDARD_EVAL
from ffcv_imagenet.data.read.decoders import IMAGENET_MEAN, IMAGENET_STD
from ffcv_imagenet.data.folders import DatasetError, classes_path, load_classes
from ffcv_imagenet.data.read.torchvision_pipelines import (OnDevice, list_eval_folder,
                                                      standard_eval_loader)
from ffcv_imagenet.training.checkpoint import TrainState, checkpoint_state, save_checkpoint
from ffcv_imagenet.training.ema import ModelEMA
from ffcv_imagenet.training.evaluate import evaluate
from ffcv_imagenet.training.logs import read_log
from ffcv_imagenet.training.models import build_model
from ffcv_imagenet.training.optim import build_optimizer, resolve_precision
from train_args import tiny_args

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device('cpu')
RESIZE, CROP = 40, 32  # pixels: small, so that the CPU tests stay fast


def by_hand(path, resize=RESIZE, crop=CROP):
    """(3, crop, crop) float32: the standard evaluation written out with PIL and numpy."""
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


@pytest.fixture(scope='module')
def tiny_folder(tmp_path_factory):
    """8 classes x 3 images of 20-90 px a side, landscape and portrait, one grayscale
    and one PNG (ImageFolder reads both as RGB)."""
    root = tmp_path_factory.mktemp('standard') / 'val'
    rng = np.random.default_rng(0)
    classes = [f'n{index:08d}' for index in range(8)]
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for index in range(3):
            height, width = rng.integers(20, 90, size=2)
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            pixels[..., label % 3] //= 2  # a class colour cast for the model to see
            image = Image.fromarray(pixels)
            if (label, index) == (2, 1):
                image = image.convert('L')
            suffix = '.png' if (label, index) == (5, 0) else '.JPEG'
            image.save(root / name / f'img_{index}{suffix}')
    return root, classes


def tiny_model(classes: int) -> nn.Module:
    """Max-pooled features: its predictions vary between images (an average-pooled
    random network tends to name one class for all)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.AdaptiveMaxPool2d(2),
                         nn.Flatten(), nn.Linear(64, classes))


def test_the_standard_eval_matches_a_computation_by_hand(tiny_folder):
    root, classes = tiny_folder
    model = tiny_model(len(classes))
    loader = standard_eval_loader(root, classes, resize=RESIZE, crop=CROP, batch_size=5,
                                  workers=0)
    images, labels = next(iter(loader))
    assert images.shape == (5, 3, CROP, CROP) and labels.tolist() == [0, 0, 0, 1, 1]
    torch.testing.assert_close(images[4], by_hand(root / classes[1] / 'img_1.JPEG'),
                               atol=1e-6, rtol=0)
    result, = evaluate([model], OnDevice(loader, CPU, channels_last=False),
                       precision=resolve_precision('off', CPU), tta=False, device=CPU,
                       all_ranks=False)
    top1, top5, count, predicted = hits_by_hand(model, root, classes)
    assert len(predicted) > 1 and 0 < top5 < count  # the counts can tell labels apart
    assert result['images'] == count == 24
    assert result['top1'] == pytest.approx(top1 / count)
    assert result['top5'] == pytest.approx(top5 / count)


def test_class_folders_must_be_the_runs_classes(tiny_folder, tmp_path):
    root, classes = tiny_folder
    with pytest.raises(DatasetError, match=r'not in the class list: 1 \(n00000007\)'):
        list_eval_folder(root, classes[:7])
    with pytest.raises(DatasetError, match=r'classes without a folder: 1 \(n99999999\)'):
        list_eval_folder(root, classes + ['n99999999'])
    with pytest.raises(DatasetError, match='folder not found'):
        list_eval_folder(tmp_path / 'nowhere', classes)


def test_tiny_imagenet_val_is_labelled_by_its_annotations(tmp_path):
    (tmp_path / 'images').mkdir()
    rows = []
    for index, wnid in enumerate(['n2', 'n1', 'n2']):
        Image.new('RGB', (8, 8)).save(tmp_path / 'images' / f'val_{index}.JPEG')
        rows.append(f'val_{index}.JPEG\t{wnid}\t0\t0\t8\t8')
    (tmp_path / 'val_annotations.txt').write_text('\n'.join(rows) + '\n')
    samples = list_eval_folder(tmp_path, ['n1', 'n2'])
    assert [(os.path.basename(p), label) for p, label in samples] == [
        ('val_1.JPEG', 0), ('val_0.JPEG', 1), ('val_2.JPEG', 1)]


@pytest.fixture(scope='module')
def checkpoint(betons, tmp_path_factory):
    """A ResNet-18 checkpoint for the tiny run, raw weights and an EMA that differs."""
    classes, _ = load_classes(classes_path(betons[0]))
    torch.manual_seed(1)
    model = build_model('resnet18', len(classes), blurpool=True, channels_last=True)
    ema = ModelEMA(model, 0.9)
    with torch.no_grad():
        for param in ema.module.parameters():
            param.add_(0.05 * torch.randn_like(param))
    optimizer = build_optimizer('sgd', model, lr=0.1, weight_decay=0.0)
    meta = {'arch': 'resnet18', 'num_classes': len(classes), 'classes': classes,
            'config': {}, 'world_size': 1, 'batch': 8}
    saved = checkpoint_state(model, optimizer, torch.amp.GradScaler('cpu', enabled=False),
                             TrainState(), meta, ema)
    return save_checkpoint(saved, tmp_path_factory.mktemp('ckpt') / 'final.pt'), model, ema


def eval_args(betons, folder, checkpoint_path, *extra):
    # one decoding thread, which ffcv also makes torch's: the tiny batches run no faster
    # on two, and far slower when another job keeps the cores busy
    return tiny_args(betons, folder, f'--checkpoint.resume={checkpoint_path}',
                     '--training.eval_only=1', '--ema.enabled=1', '--data.num_workers=1',
                     f'--validation.folder_resize={RESIZE}', f'--validation.folder_crop={CROP}',
                     *extra)


def test_eval_only_logs_and_prints_the_standard_eval(betons, synth, checkpoint, tmp_path,
                                                     capsys):
    path, model, ema = checkpoint
    run_dir = tmp_path / 'eval'
    args = eval_args(betons, run_dir, path, f'--validation.folder={synth / "val"}')
    assert train_imagenet.main(args) == 0
    out = capsys.readouterr()
    events = [e for e in read_log(run_dir, 'eval') if e.get('protocol') == STANDARD_EVAL]
    assert len(events) == 1
    event = events[0]
    assert (event['resize'], event['crop'], event['images']) == (RESIZE, CROP, 20)
    classes, _ = load_classes(classes_path(betons[0]))
    for prefix, network in (('val_', model), ('ema_val_', ema.module)):
        top1, top5, count, _ = hits_by_hand(network, synth / 'val', classes)
        assert event[f'{prefix}top1'] == pytest.approx(top1 / count), prefix
        assert event[f'{prefix}top5'] == pytest.approx(top5 / count), prefix
    assert f"protocol={STANDARD_EVAL}" in out.out  # the event's line on stdout
    assert re.search(rf"{STANDARD_EVAL} of .* centre crop {CROP} px\): .*val_top1=", out.err)


def test_a_missing_folder_is_one_line_and_exit_2(betons, checkpoint, tmp_path, capsys):
    args = eval_args(betons, tmp_path / 'eval', checkpoint[0],
                     f'--validation.folder={tmp_path / "nowhere"}')
    assert train_imagenet.run(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: validation.folder: folder not found: {tmp_path / 'nowhere'}"
    assert not any(line.startswith('error') for line in err[:-1])


def test_foreign_class_folders_are_one_line(betons, synth, checkpoint, tmp_path, capsys):
    folder = tmp_path / 'val'
    folder.mkdir()
    for source in (synth / 'val').iterdir():
        os.symlink(source, folder / source.name)
    (folder / 'n99999999').mkdir()
    args = eval_args(betons, tmp_path / 'eval', checkpoint[0], f'--validation.folder={folder}')
    assert train_imagenet.run(args) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: validation.folder: the class folders of {folder} do not "
                           f"match the 4 classes of the run: not in the class list: 1 "
                           f"(n99999999)")


@pytest.mark.parametrize('extra, message', [
    (['--validation.folder=X'], 'validation.folder needs training.eval_only=1'),
    (['--validation.folder_crop=300'], r'validation.folder_crop \(300\) must not exceed '
                                       r'validation.folder_resize \(256\)'),
    (['--validation.folder_resize=0'], 'validation.folder_resize must be positive'),
])
def test_bad_standard_eval_settings_are_one_line(betons, tmp_path, capsys, extra, message):
    assert train_imagenet.run(tiny_args(betons, tmp_path / 'x', *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0])
    assert not (tmp_path / 'x').exists()


@pytest.mark.slow
def test_under_torchrun_rank_0_alone_runs_the_standard_eval(betons, synth, checkpoint,
                                                            tmp_path):
    """Two gloo processes: the .beton evaluation all-reduced, then rank 0 alone reads the
    folder (no collective left for the other to wait on) and scores every image."""
    run_dir = tmp_path / 'ddp'
    args = eval_args(betons, run_dir, checkpoint[0], f'--validation.folder={synth / "val"}',
                     '--training.global_batch_size=8')  # the checkpoint's: 1 x 8
    done = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--standalone',
         'train_imagenet.py', *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count(f'{STANDARD_EVAL} of') == 1
    event, = [e for e in read_log(run_dir, 'eval') if e.get('protocol') == STANDARD_EVAL]
    assert event['images'] == 20
    classes, _ = load_classes(classes_path(betons[0]))
    top1, top5, count, _ = hits_by_hand(checkpoint[1], synth / 'val', classes)
    assert event['val_top1'] == pytest.approx(top1 / count)
