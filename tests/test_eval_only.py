"""Evaluating a checkpoint with the training command (--training.eval_only=1): the
checkpoint's metrics, a table of several resolutions and centre-crop ratios, and
torchvision's standard evaluation of a folder (checked against a computation by hand;
one-line errors; under torchrun rank 0 alone reads the folder)."""
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import train_imagenet
from ffcv_imagenet.cli.train import STANDARD_EVAL
from ffcv_imagenet.data.folders import classes_path, load_classes
from ffcv_imagenet.training.checkpoint import (TrainState, checkpoint_dir, checkpoint_state,
                                               save_checkpoint)
from ffcv_imagenet.training.ema import ModelEMA
from ffcv_imagenet.training.logs import read_log
from ffcv_imagenet.training.models import build_model
from ffcv_imagenet.training.optim import build_optimizer
from tests.support import EVAL_CROP as CROP, EVAL_RESIZE as RESIZE, ROOT, hits_by_hand, tiny_args


def test_eval_only_reports_the_checkpoint_metrics(betons, full_run, tmp_path, capsys):
    final = checkpoint_dir(full_run) / 'final.pt'
    args = tiny_args(betons, tmp_path / 'eval', f'--checkpoint.resume={final}',
                     '--training.eval_only=1')
    assert train_imagenet.main(args) == 0
    logged = read_log(full_run, 'epoch')[-1]
    assert f"top1={logged['val_top1']:.4g}" in capsys.readouterr().out
    assert not checkpoint_dir(tmp_path / 'eval').exists()  # evaluating writes no checkpoint


def test_training_with_erasing_and_evaluating_at_several_resolutions_and_crops(
        betons, tmp_path, capsys):
    folder = tmp_path / 'run'
    assert train_imagenet.main(tiny_args(betons, folder, '--erase.prob=0.5',
                                         '--training.stop_after=1')) == 0
    capsys.readouterr()
    last = checkpoint_dir(folder) / 'last.pt'
    assert train_imagenet.main(tiny_args(
        betons, folder, f'--checkpoint.resume={last}', '--training.eval_only=1',
        '--validation.resolutions=32, 64', '--validation.crop_ratios=0.5,1')) == 0
    err = capsys.readouterr().err
    table = [line for line in err.splitlines() if line.startswith('| ')]
    assert table[0].startswith('| resolution (px) | crop ratio | val_top1 | val_top5')
    assert [row.split('|')[1].strip() for row in table[1:]] == ['32', '32', '64', '64']
    assert [row.split('|')[2].strip() for row in table[1:]] == ['0.5', '1'] * 2
    swept = read_log(folder, 'eval')
    assert [(e['resolution'], e['crop_ratio']) for e in swept] == [
        (r, c) for r in (32, 64) for c in (0.5, 1.0)]
    assert swept[0]['val_loss'] != swept[1]['val_loss']  # the crop did change
    # a ratio evaluated alone gives the sweep's numbers, though the sweep changed it
    # back and forth (the decoder compiled again for each) and ended on another
    assert train_imagenet.main(tiny_args(
        betons, folder, f'--checkpoint.resume={last}', '--training.eval_only=1',
        '--validation.resolution=64', '--validation.crop_ratio=0.5')) == 0
    assert read_log(folder, 'eval')[-1]['val_loss'] == pytest.approx(swept[2]['val_loss'])
    with pytest.raises(Exception, match='validation.resolutions needs training.eval_only'):
        train_imagenet.main(tiny_args(betons, tmp_path / 'x', '--validation.resolutions=32'))
    for key, value, message in (('resolutions', '32,big', 'expected pixel sizes'),
                                ('crop_ratios', '0.5,1.5', r'expected centre-crop ratios in \(0, 1\]')):
        with pytest.raises(Exception, match=f'validation.{key}: {message}'):
            train_imagenet.main(tiny_args(betons, tmp_path / 'y', '--training.eval_only=1',
                                          f'--checkpoint.resume={last}',
                                          f'--validation.{key}={value}'))


# --- torchvision's standard evaluation of a folder ---------------------------------------

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
    folder = tmp_path_factory.mktemp('ckpt')
    yield save_checkpoint(saved, folder / 'final.pt'), model, ema
    shutil.rmtree(folder)  # not kept to the session's end


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
