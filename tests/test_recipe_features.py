"""The recipe features (EMA, MixUp/CutMix, drop path, OneCycle, plots, early stopping)
inside real training runs: ResNet-18 at 32 -> 64 px on the CPU, 4 classes."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

import train_imagenet
from ffcv_imagenet.training.checkpoint import (TrainState, checkpoint_dir, checkpoint_state,
                                               load_checkpoint, restore)
from ffcv_imagenet.training.ema import ModelEMA
from ffcv_imagenet.training.logs import read_log
from ffcv_imagenet.training.schedules import lr_schedule
from ffcv_imagenet.training.loop import FitOptions, _update_best
from train_args import tiny_args

ROOT = Path(__file__).resolve().parents[1]

FEATURES = ('--ema.enabled=1', '--ema.decay=0.9', '--ema.warmup_steps=2',
            '--checkpoint.best_metric=ema_val_top1', '--mix.mixup_alpha=0.2',
            '--mix.cutmix_alpha=1.0', '--model.drop_path_rate=0.1',
            '--lr.schedule=onecycle', '--lr.pct_start=0.3', '--logging.plot=1')


def train(betons, folder, *extra):
    assert train_imagenet.main(tiny_args(betons, folder, *extra)) == 0
    return folder


@pytest.fixture(scope='module')
def featured(betons, tmp_path_factory):
    """One uninterrupted 2-epoch run with every feature on."""
    return train(betons, tmp_path_factory.mktemp('featured') / 'run', *FEATURES)


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


def test_resume_restores_the_ema_exactly(betons, featured, tmp_path):
    folder = train(betons, tmp_path / 'run', *FEATURES, '--training.stop_after=1')
    assert read_log(folder, 'epoch')[-1]['epoch'] == 1
    train(betons, folder, *FEATURES, '--checkpoint.resume=auto')
    resumed = load_checkpoint(checkpoint_dir(folder) / 'final.pt')
    unbroken = load_checkpoint(checkpoint_dir(featured) / 'final.pt')
    for part in ('model', 'ema'):
        a = resumed[part] if part == 'model' else resumed[part]['module']
        b = unbroken[part] if part == 'model' else unbroken[part]['module']
        for key in a:
            assert torch.equal(a[key], b[key]), (part, key)
    assert read_log(folder, 'epoch')[-1]['ema_val_top1'] == \
        read_log(featured, 'epoch')[-1]['ema_val_top1']


def test_changing_the_best_metric_on_resume_tracks_the_best_afresh(betons, tmp_path):
    ema = ('--ema.enabled=1', '--ema.decay=0.9')
    folder = train(betons, tmp_path / 'run', *ema, '--training.stop_after=1')
    first = read_log(folder, 'epoch')[0]
    train(betons, folder, *ema, '--checkpoint.best_metric=ema_val_top1',
          '--checkpoint.resume=auto')
    second = read_log(folder, 'epoch')[-1]
    assert first['best_val_top1'] == first['val_top1']
    # epoch 2 is the first epoch judged by the EMA metric, so it is the best so far
    assert second['best_ema_val_top1'] == second['ema_val_top1']
    assert load_checkpoint(checkpoint_dir(folder) / 'best.pt')['epoch'] == 2


def test_a_checkpoint_without_ema_starts_the_average_from_its_weights():
    torch.manual_seed(0)
    model, other = nn.Linear(3, 2), nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler('cpu', enabled=False)
    saved = checkpoint_state(model, optimizer, scaler, TrainState(epoch=1, iteration=5), {})
    ema = ModelEMA(other, 0.9)
    state = restore(saved, other, torch.optim.SGD(other.parameters(), lr=0.1), scaler, ema)
    assert state.iteration == 5
    assert torch.equal(ema.module.weight, model.weight)


@pytest.mark.parametrize('top1s, patience, min_epochs, stop_at', [
    ([0.1, 0.2, 0.2, 0.2, 0.3], 2, 0, 4),     # two epochs without a new best
    ([0.5, 0.4, 0.4, 0.4, 0.4], 1, 3, 3),     # would stop at 2, but not before 3
    ([0.1, 0.2, 0.3, 0.4, 0.5], 1, 0, None),  # always improving
    ([0.5, 0.5, 0.5, 0.5, 0.5], 0, 0, None),  # patience 0 = off
])
def test_early_stopping_rule(top1s, patience, min_epochs, stop_at):
    options = FitOptions(epochs=10, patience=patience, min_epochs=min_epochs)
    state = TrainState()
    for epoch, top1 in enumerate(top1s, start=1):
        state.epoch = epoch
        _update_best(state, {'val_top1': top1}, options)
        if state.stopped_early:
            break
    assert (state.epoch if state.stopped_early else None) == stop_at
    assert state.best_top1 == max(top1s[:state.epoch])


def test_early_stopping_ends_the_run_with_final_and_best(betons, tmp_path, capsys):
    # lr 0: the weights never move, so validation cannot keep improving
    folder = train(betons, tmp_path / 'run', '--training.epochs=6', '--lr.lr=0',
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
    train(betons, folder, '--training.epochs=6', '--lr.lr=0', '--early_stop.patience=1',
          '--early_stop.min_epochs=2', '--checkpoint.resume=auto')
    assert len(read_log(folder, 'epoch')) == len(epochs)  # a finished run stays finished


def test_the_cpu_advanced_recipe_trains_one_epoch(betons, tmp_path):
    train_path, val_path = betons
    folder = tmp_path / 'advanced'
    assert train_imagenet.main([
        '-C', str(ROOT / 'rn50_configs' / 'rn50_cpu_advanced.yaml'), f'--data.train_dataset={train_path}',
        f'--data.val_dataset={val_path}', '--training.batch_size=16',
        '--validation.batch_size=10', '--training.stop_after=1', '--logging.progress=0',
        f'--logging.folder={folder}']) == 0
    (record,) = read_log(folder, 'epoch')
    assert record['epoch'] == 1 and record['train_top1_label'] == 'dominant label'
    assert 0 <= record['ema_val_top1'] <= 1 and record['best_ema_val_top1'] is not None
    saved = load_checkpoint(checkpoint_dir(folder) / 'last.pt')
    assert saved['arch'] == 'resnet50' and saved['ema'] is not None


@pytest.mark.parametrize('name, extra', [
    # the test split has 48 images: smaller batches than the demo data's
    ('rn50_cpu_reference_advanced.yaml', '--resolution.stages=0:48:16,1:64:8'),
    ('rn50_cpu_reference_plain.yaml', '--training.batch_size=16'),
])
def test_the_cpu_reference_recipes_train_one_epoch(betons, tmp_path, name, extra):
    train_path, val_path = betons
    folder = tmp_path / 'reference'
    assert train_imagenet.main([
        '-C', str(ROOT / 'rn50_configs' / name), f'--data.train_dataset={train_path}',
        f'--data.val_dataset={val_path}', extra, '--validation.batch_size=10',
        '--training.stop_after=1', '--logging.progress=0', f'--logging.folder={folder}']) == 0
    (record,) = read_log(folder, 'epoch')
    assert record['batch_size'] == 16 and 0 <= record['val_top1'] <= 1
    saved = load_checkpoint(checkpoint_dir(folder) / 'last.pt')
    names = {p.name for p in checkpoint_dir(folder).glob('*.pt')}
    if 'advanced' in name:
        assert saved['ema'] is not None and 'fc.weight' not in saved['model']  # 1x1 head
        assert record['best_val_top1'] is None and 'best.pt' not in names  # best_after: 4
    else:
        assert saved['ema'] is None and 'fc.weight' in saved['model']
        assert 'best.pt' in names
