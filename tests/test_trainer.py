"""The trainer end to end on tiny synthetic data (ResNet-18 at 32 px on the CPU)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_imagenet
from ffcv_imagenet.training.checkpoint import CheckpointError, checkpoint_dir, load_checkpoint
from ffcv_imagenet.cli.config import ConfigError
from ffcv_imagenet.training.logs import read_log
from ffcv_imagenet.training.loop import NonFiniteLossError
from train_args import tiny_args

ROOT = Path(__file__).resolve().parents[1]


def weights(path):
    return load_checkpoint(path)['model']


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.fixture(scope='module')
def full_run(betons, tmp_path_factory):
    """An uninterrupted 2-epoch run."""
    folder = tmp_path_factory.mktemp('full') / 'run'
    assert train_imagenet.main(tiny_args(betons, folder)) == 0
    return folder


def test_a_run_logs_every_epoch_and_writes_its_checkpoints(full_run):
    epochs = read_log(full_run, 'epoch')
    assert [e['epoch'] for e in epochs] == [1, 2]
    assert [e['resolution'] for e in epochs] == [32, 64]  # the ramp reached max_res
    for record in epochs:
        assert 0 < record['train_loss'] < 10  # a real value, not null
        assert 0 <= record['val_top1'] <= record['val_top5'] <= 1
        assert record['images_per_sec'] > 0 and record['epoch_time'] > 0
    assert epochs[1]['lr'] < epochs[0]['lr']  # cyclic: past the peak at epoch 1
    names = {p.name for p in checkpoint_dir(full_run).glob('*.pt')}
    assert {'last.pt', 'best.pt', 'final.pt'} <= names
    config = json.loads((full_run / 'config.json').read_text())
    assert config['training.epochs'] == 2 and config['model.arch'] == 'resnet18'
    final = load_checkpoint(checkpoint_dir(full_run) / 'final.pt')
    assert final['epoch'] == 2 and final['iteration'] == epochs[1]['iteration']
    assert final['best_top1'] == max(e['val_top1'] for e in epochs)
    assert final['config']['training.epochs'] == 2
    assert len(final['classes']) == final['num_classes'] == 4


def test_same_seed_same_run(betons, full_run, tmp_path):
    assert train_imagenet.main(tiny_args(betons, tmp_path / 'again')) == 0
    assert_same_weights(weights(checkpoint_dir(full_run) / 'final.pt'),
                        weights(checkpoint_dir(tmp_path / 'again') / 'final.pt'))
    assert read_log(full_run, 'epoch')[-1]['val_loss'] == \
        read_log(tmp_path / 'again', 'epoch')[-1]['val_loss']


def test_resume_after_an_interruption_matches_an_uninterrupted_run(betons, full_run,
                                                                   tmp_path):
    folder = tmp_path / 'split'
    assert train_imagenet.main(tiny_args(betons, folder, '--training.stop_after=1')) == 0
    assert load_checkpoint(checkpoint_dir(folder) / 'last.pt')['epoch'] == 1
    assert not (checkpoint_dir(folder) / 'final.pt').exists()
    assert train_imagenet.main(tiny_args(betons, folder, '--checkpoint.resume=auto')) == 0
    assert_same_weights(weights(checkpoint_dir(full_run) / 'final.pt'),
                        weights(checkpoint_dir(folder) / 'final.pt'))
    whole, split = read_log(full_run, 'epoch'), read_log(folder, 'epoch')
    for key in ('train_loss', 'train_top1', 'val_loss', 'val_top1', 'lr', 'resolution'):
        assert [e[key] for e in whole] == [e[key] for e in split], key
    assert [e['event'] for e in read_log(folder)] == ['start', 'epoch', 'end', 'resume',
                                                      'epoch', 'end']


def test_eval_only_reports_the_checkpoint_metrics(betons, full_run, tmp_path, capsys):
    final = checkpoint_dir(full_run) / 'final.pt'
    args = tiny_args(betons, tmp_path / 'eval', f'--checkpoint.resume={final}',
                     '--training.eval_only=1')
    assert train_imagenet.main(args) == 0
    logged = read_log(full_run, 'epoch')[-1]
    assert f"top1={logged['val_top1']:.4g}" in capsys.readouterr().out
    assert not checkpoint_dir(tmp_path / 'eval').exists()  # evaluating writes no checkpoint


def test_a_fresh_run_refuses_a_folder_with_checkpoints(betons, full_run):
    before = (checkpoint_dir(full_run) / 'last.pt').read_bytes()
    with pytest.raises(ConfigError, match='checkpoint.resume=auto'):
        train_imagenet.main(tiny_args(betons, full_run))
    assert (checkpoint_dir(full_run) / 'last.pt').read_bytes() == before


def test_auto_resume_in_an_empty_folder_starts_fresh(betons, tmp_path, capsys):
    args = tiny_args(betons, tmp_path / 'new', '--checkpoint.resume=auto',
                     '--training.epochs=1', '--lr.peak_epoch=0.5', '--validation.every=5')
    assert train_imagenet.main(args) == 0
    assert 'starting fresh' in capsys.readouterr().err
    assert read_log(tmp_path / 'new', 'epoch')[0]['val_top1'] is not None  # last epoch


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(betons, full_run,
                                                                        tmp_path):
    folder = tmp_path / 'nan'
    folder.mkdir()
    (folder / 'checkpoints').mkdir()
    last = folder / 'checkpoints' / 'last.pt'
    last.write_bytes((checkpoint_dir(full_run) / 'last.pt').read_bytes())
    good = last.read_bytes()
    args = tiny_args(betons, folder, '--checkpoint.resume=auto', '--training.epochs=3',
                     '--lr.lr=1e30', '--lr.schedule=step', '--logging.log_every=1')
    with pytest.raises(NonFiniteLossError, match='loss became'):
        train_imagenet.main(args)
    assert 'loss became' in read_log(folder, 'stop')[0]['reason']
    assert last.read_bytes() == good
    assert sorted(p.name for p in (folder / 'checkpoints').iterdir()) == ['last.pt']


@pytest.mark.parametrize('change, error, message', [
    ('--training.batch_size=4', ConfigError,
     'training.batch_size: .*global batch of 1 x 8 = 8 .*1 x 4 = 4.*global_batch_size=8'),
    ('--model.arch=resnet50', CheckpointError, 'resnet18 with 4 classes.*resnet50'),
])
def test_resuming_an_incompatible_checkpoint_is_refused(betons, full_run, tmp_path, change,
                                                       error, message):
    final = checkpoint_dir(full_run) / 'final.pt'
    args = tiny_args(betons, tmp_path / 'x', change, f'--checkpoint.resume={final}')
    with pytest.raises(error, match=message):
        train_imagenet.main(args)


@pytest.mark.parametrize('extra, message', [
    (['--training.epochz=3'], 'training.epochz'),
    (['--training.epochs=three'], 'training.epochs'),
    (['--training.epochs=0'], 'training.epochs must be positive'),
    (['--model.arch=vgg'], 'model.arch'),
    (['--data.train_dataset=/nowhere/train.beton'], 'data.train_dataset.*/nowhere'),
    (['--training.batch_size=1000'], 'fewer than one batch'),
    (['--lr.peak_epoch=7'], 'lr.peak_epoch must lie strictly between'),
    (['--resolution.min_res=256'], 'min_res'),
    (['--checkpoint.resume=/nowhere/last.pt'], '/nowhere/last.pt'),
    (['--training.eval_only=1'], 'checkpoint.resume'),
    (['--training.eval_only=1', '--checkpoint.resume=auto'], 'no checkpoint in'),
    (['--training.precision=fp16'], 'training.precision: precision fp16 needs a CUDA'),
    (['--training.device=cuda'] if not torch.cuda.is_available() else ['--training.epochs=-1'],
     'training.device: |training.epochs'),
    (['--optimizer.nesterov=1', '--optimizer.momentum=0'], 'optimizer.nesterov'),
    (['--training.label_smoothing=1.5'], 'label_smoothing'),
    (['--model.drop_path_rate=1'], r'model.drop_path_rate must be in \[0, 1\)'),
    (['--ema.decay=1'], 'ema.decay'),
    (['--ema.every=0'], 'ema.every must be positive'),
    (['--mix.prob=1.5'], r'mix.prob must be in \[0, 1\]'),
    (['--mix.cutmix_alpha=-1'], 'mix.cutmix_alpha must not be negative'),
    (['--checkpoint.best_metric=ema_val_top1'], 'needs ema.enabled=1'),
    (['--early_stop.patience=-2'], 'early_stop.patience'),
    (['--lr.schedule=onecycle', '--lr.pct_start=1.5'], 'lr.pct_start'),
])
def test_bad_config_is_one_clear_error_before_any_work(betons, tmp_path, extra, message):
    with pytest.raises((ConfigError, CheckpointError), match=message):
        train_imagenet.main(tiny_args(betons, tmp_path / 'bad', *extra))
    assert not (tmp_path / 'bad').exists()


def test_global_batch_size_must_divide_by_the_world_size():
    from ffcv_imagenet.cli.train_config import per_gpu_batch, resolution_stages
    config = {'training.global_batch_size': 1024, 'training.batch_size': 7,
              'resolution.stages': '', 'training.epochs': 10}
    assert per_gpu_batch(config, 8, None) == 128
    assert per_gpu_batch({**config, 'training.global_batch_size': 0}, 8, None) == 7
    with pytest.raises(ConfigError, match='global_batch_size=1024 is not divisible by the 3'):
        per_gpu_batch(config, 3, None)
    staged = {**config, 'training.global_batch_size': 0, 'resolution.stages': '0:64:32,5:96:16'}
    assert per_gpu_batch(staged, 8, resolution_stages(staged)) == 32  # the first stage's


def test_the_command_line_prints_one_line_and_exits_2(betons, tmp_path):
    args = tiny_args(betons, tmp_path / 'cli', '--data.val_dataset=/nowhere/val.beton')
    done = subprocess.run([sys.executable, 'train_imagenet.py', *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: data.val_dataset: .beton file not found: "
                                   "/nowhere/val.beton")


def test_bf16_autocast_on_the_cpu(betons, tmp_path):
    args = tiny_args(betons, tmp_path / 'bf16', '--training.precision=bf16',
                     '--training.epochs=1', '--lr.peak_epoch=0.5')
    assert train_imagenet.main(args) == 0
    epoch, = read_log(tmp_path / 'bf16', 'epoch')
    assert 0 < epoch['train_loss'] < 10 and epoch['val_top1'] is not None
    saved = load_checkpoint(checkpoint_dir(tmp_path / 'bf16') / 'final.pt')
    assert saved['config']['training.precision'] == 'bf16'
    assert all(t.dtype == torch.float32 for t in saved['model'].values()
               if t.is_floating_point())  # autocast leaves the weights in fp32


@pytest.mark.slow
def test_torch_compile_trains_and_saves_plain_torchvision_keys(betons, tmp_path):
    import torchvision
    args = tiny_args(betons, tmp_path / 'compiled', '--model.compile=1',
                     '--training.epochs=1', '--lr.peak_epoch=0.5')
    assert train_imagenet.main(args) == 0
    epoch, = read_log(tmp_path / 'compiled', 'epoch')
    assert 0 < epoch['train_loss'] < 10
    saved = weights(checkpoint_dir(tmp_path / 'compiled') / 'final.pt')
    reference = torchvision.models.resnet18(num_classes=4).state_dict()
    assert list(saved) == list(reference)  # no '_orig_mod.' prefixes


def _torchrun(args, timeout=600):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
         '--standalone', 'train_imagenet.py', *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_two_processes_under_torchrun_with_gloo_and_resume(betons, tmp_path):
    folder = tmp_path / 'ddp'
    args = tiny_args(betons, folder, '--training.batch_size=4', '--lr.peak_epoch=0.5')
    done = _torchrun([*args, '--training.stop_after=1'])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count('new run in') == 1  # only rank 0 reports
    start, = read_log(folder, 'start')
    assert start['world_size'] == 2
    epoch, = read_log(folder, 'epoch')
    # 48 train images: 2 ranks x 6 steps x 4 images; val: each of 20 images once
    assert epoch['iteration'] == 6
    assert epoch['images_per_sec'] > 0 and 0 <= epoch['val_top1'] <= 1
    done = _torchrun([*args, '--checkpoint.resume=auto'])
    assert done.returncode == 0, done.stderr[-3000:]
    assert [e['event'] for e in read_log(folder)] == ['start', 'epoch', 'end', 'resume',
                                                      'epoch', 'end']
    assert read_log(folder, 'epoch')[-1]['iteration'] == 12
    assert load_checkpoint(checkpoint_dir(folder) / 'final.pt')['epoch'] == 2
