"""The training command (train_imagenet.py, ``python -m ffcv_imagenet train``) end to
end on tiny synthetic data: ResNet-18 at 32 -> 64 px on the CPU, 4 classes. A run logs
every epoch and writes its checkpoints, the same seed gives the same run; bf16,
torch.compile; the recipe features (EMA, MixUp/CutMix,
drop path, OneCycle, plots, early stopping), staged resizing and each optimizer inside
real runs; the period of last.pt; a bad config, .beton or class list stops the run
before any work with one line."""
import json
import math
import subprocess
import sys

import pytest
import torch
from torchvision.models import resnet18

import train_imagenet
from ffcv_imagenet.cli.config import ConfigError
from ffcv_imagenet.data.folders import classes_path
from ffcv_imagenet.training import loop
from ffcv_imagenet.training.checkpoint import CheckpointError, checkpoint_dir, load_checkpoint
from ffcv_imagenet.training.logs import read_log
from ffcv_imagenet.training.loop import NonFiniteLossError
from ffcv_imagenet.training.schedules import lr_schedule
from tests.support import (ROOT, assert_same_weights, copy_beton, empty_beton, jpeg_file,
                           tiny_args, train_tiny, weights)


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


def test_same_seed_same_run(betons, tmp_path):
    """Also with two decoding threads, whose scheduling must not change a crop."""
    runs = [tmp_path / 'first', tmp_path / 'again']
    for folder in runs:
        assert train_imagenet.main(tiny_args(betons, folder, '--data.num_workers=2')) == 0
    assert_same_weights(*(weights(checkpoint_dir(folder) / 'final.pt') for folder in runs))
    assert read_log(runs[0], 'epoch')[-1]['val_loss'] == \
        read_log(runs[1], 'epoch')[-1]['val_loss']


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


# --- the recipe features inside a real run -----------------------------------------------

def test_ema_is_validated_beside_the_raw_weights_and_checkpointed(featured):
    for record in read_log(featured, 'epoch'):
        for prefix in ('val_', 'ema_val_'):
            assert 0 <= record[f'{prefix}top1'] <= record[f'{prefix}top5'] <= 1
            assert record[f'{prefix}loss'] > 0
    saved = load_checkpoint(checkpoint_dir(featured) / 'final.pt')
    ema, raw = saved['ema']['module'], saved['model']
    assert ema.keys() == raw.keys()
    assert all(ema[k].dtype == torch.float32 for k in ema if ema[k].is_floating_point())
    assert not torch.equal(ema['fc.weight'], raw['fc.weight'])  # an average, not a copy
    # BatchNorm statistics are averaged too (ema.buffers=average), the step count copied
    assert not torch.equal(ema['bn1.running_mean'], raw['bn1.running_mean'])
    assert torch.equal(ema['bn1.num_batches_tracked'], raw['bn1.num_batches_tracked'])


def test_best_checkpoint_is_chosen_on_the_ema_metric(featured):
    epochs = read_log(featured, 'epoch')
    best = max(e['ema_val_top1'] for e in epochs)
    assert epochs[-1]['best_ema_val_top1'] == best
    saved = load_checkpoint(checkpoint_dir(featured) / 'best.pt')
    first_best = next(e for e in epochs if e['ema_val_top1'] == best)
    assert saved['epoch'] == first_best['epoch'] and saved['best_top1'] == best


def test_mixing_measures_train_top1_against_the_dominant_label(featured):
    for record in read_log(featured, 'epoch'):
        assert record['train_top1_label'] == 'dominant label'
        assert 0 <= record['train_top1'] <= 1


def test_onecycle_rates_reach_the_log(featured):
    config = json.loads((featured / 'config.json').read_text())
    assert config['lr.schedule'] == 'onecycle' and config['model.drop_path_rate'] == 0.1
    steps = read_log(featured, 'epoch')[0]['iteration']
    peak = config['lr.lr'] * config['training.batch_size'] / config['lr.reference_batch']
    lr_at = lr_schedule('onecycle', peak_lr=peak, epochs=2, steps_per_epoch=steps,
                        pct_start=0.3)
    for record in read_log(featured, 'epoch'):
        assert record['lr'] == pytest.approx(lr_at(record['iteration'] - 1))


def test_drop_path_model_keeps_torchvision_keys(featured):
    saved = load_checkpoint(checkpoint_dir(featured) / 'final.pt')
    assert saved['model'].keys() == resnet18(num_classes=4).state_dict().keys()


def test_plots_are_written_at_the_end_of_a_run(featured):
    for name in ('loss', 'accuracy', 'lr', 'resolution'):
        assert (featured / 'plots' / f'{name}.png').read_bytes()[:4] == b'\x89PNG'


def test_early_stopping_ends_the_run_with_final_and_best(betons, tmp_path, capsys):
    # lr 0: the weights never move, so validation cannot keep improving
    folder = train_tiny(betons, tmp_path / 'run', '--training.epochs=6', '--lr.lr=0',
                        '--early_stop.patience=1', '--early_stop.min_epochs=2')
    epochs = read_log(folder, 'epoch')
    stop = read_log(folder, 'early_stop')
    assert len(stop) == 1 and len(epochs) < 6
    last = epochs[-1]['epoch']
    assert stop[0]['epoch'] == last >= 2
    best_epoch = stop[0]['best_epoch']
    assert last - best_epoch >= 1
    assert epochs[best_epoch - 1]['val_top1'] == max(e['val_top1'] for e in epochs)
    folder_ckpt = checkpoint_dir(folder)
    assert load_checkpoint(folder_ckpt / 'final.pt')['epoch'] == last
    assert load_checkpoint(folder_ckpt / 'best.pt')['epoch'] == best_epoch
    assert 'stopped early' in capsys.readouterr().err
    train_tiny(betons, folder, '--training.epochs=6', '--lr.lr=0', '--early_stop.patience=1',
               '--early_stop.min_epochs=2', '--checkpoint.resume=auto')
    assert len(read_log(folder, 'epoch')) == len(epochs)  # a finished run stays finished


# --- staged resizing, each optimizer, the period of last.pt ------------------------------

def test_each_epoch_trains_at_its_stages_resolution_and_batch(staged_run):
    epochs = read_log(staged_run, 'epoch')
    assert [e['resolution'] for e in epochs] == [32, 48]
    assert [e['batch_size'] for e in epochs] == [16, 8]
    assert [e['global_batch_size'] for e in epochs] == [16, 8]
    assert [e['iteration'] for e in epochs] == [48 // 16, 48 // 16 + 48 // 8]


@pytest.mark.parametrize('name', ['adamw', 'lars'])
def test_training_with_each_optimizer_and_refusing_to_switch_on_resume(betons, tmp_path,
                                                                       name):
    folder = tmp_path / name
    lr = '--lr.lr=0.003' if name == 'adamw' else '--lr.lr=2.0'
    assert train_imagenet.main(tiny_args(betons, folder, f'--optimizer.name={name}', lr,
                                         '--training.stop_after=1')) == 0
    saved = load_checkpoint(checkpoint_dir(folder) / 'last.pt')
    assert saved['config']['optimizer.name'] == name
    assert math.isfinite(saved['metrics']['train_loss'])
    with pytest.raises(ConfigError, match=f'optimizer.name: .*trained with {name}'):
        train_imagenet.main(tiny_args(betons, folder, '--checkpoint.resume=auto'))
    assert train_imagenet.main(tiny_args(betons, folder, f'--optimizer.name={name}', lr,
                                         '--checkpoint.resume=auto')) == 0
    assert load_checkpoint(checkpoint_dir(folder) / 'final.pt')['epoch'] == 2


def test_last_checkpoint_period_is_a_setting(betons, tmp_path, monkeypatch):
    written = []
    real = loop.save_checkpoints
    monkeypatch.setattr(loop, 'save_checkpoints',
                        lambda folder, saved, names: written.append(
                            (saved['epoch'], names)) or real(folder, saved, names))
    folder = tmp_path / 'run'
    assert train_imagenet.main(tiny_args(betons, folder, '--training.epochs=3',
                                         '--checkpoint.last_every=2',
                                         '--validation.every=5')) == 0
    assert written == [(2, ['last.pt']), (3, ['last.pt', 'best.pt', 'final.pt'])]
    assert load_checkpoint(folder / 'checkpoints' / 'last.pt')['epoch'] == 3
    with pytest.raises(Exception, match='checkpoint.last_every: expected a positive'):
        train_imagenet.main(tiny_args(betons, tmp_path / 'bad', '--checkpoint.last_every=0'))


# --- a bad config, .beton or class list: one line before any work ------------------------

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


def test_the_command_line_prints_one_line_and_exits_2(betons, tmp_path):
    args = tiny_args(betons, tmp_path / 'cli', '--data.val_dataset=/nowhere/val.beton')
    done = subprocess.run([sys.executable, 'train_imagenet.py', *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: data.val_dataset: .beton file not found: "
                                   "/nowhere/val.beton")


@pytest.mark.parametrize('extra, message', [
    (['--resolution.stages=0:32'], "resolution.stages: expected 'epoch:pixels:batch'"),
    (['--resolution.stages=0:32:16', '--training.global_batch_size=16'],
     'global_batch_size cannot be combined with resolution.stages'),
    (['--resolution.stages=0:32:16,1:48:64'], 'resolution.stages: .*fewer than one batch of 64'),
])
def test_a_bad_stage_setting_is_one_line_naming_the_key(betons, tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        train_imagenet.main(tiny_args(betons, tmp_path / 'bad', *extra))
    assert not (tmp_path / 'bad' / 'checkpoints').exists()


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
        jpeg_file(bad)
        return (train, bad), bad
    if case == 'empty val':
        bad = copy_beton(val, tmp_path / 'empty.beton')
        empty_beton(bad)
        return (train, bad), bad
    # both class lists agree (the trainer checks that first) but are one class short
    few = ['a', 'b', 'c']
    pair = (copy_beton(train, tmp_path / 'train.beton', few),
            copy_beton(val, tmp_path / 'val.beton', few))
    if case == 'class list too short':
        return pair, classes_path(pair[0])
    classes_path(pair[0]).write_text('{"classes": ["a", "b"')
    return pair, classes_path(pair[0])


# the command in a fresh interpreter for one case (its whole stderr is the line); the
# others in this process, which spares each the 4-6 s of importing torch and ffcv anew
@pytest.mark.parametrize('case', ['truncated train', 'jpeg as val', 'class list too short',
                                  'empty val', 'class list not json'])
def test_train_imagenet_exits_2_with_one_line(betons, tmp_path, case, capsys):
    pair, named = _bad_train(betons, tmp_path, case)
    folder = tmp_path / 'run'
    if case == 'truncated train':
        done = _train(pair, folder)
        code, err = done.returncode, done.stderr
    else:
        code = train_imagenet.run(['--config', 'rn18_cpu_demo.yaml', *tiny_args(pair, folder)])
        err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and str(named) in lines[0], \
        err[-3000:]
    assert not folder.exists()  # stopped before the run folder, so before any step
