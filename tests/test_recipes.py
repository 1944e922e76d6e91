"""The shipped recipes (rn50_configs/): every one parses, its numbers say what its
comments promise (the published lengths and peak rates, the reference trainers'
settings), the train command finds one by its bare name, and the CPU versions of the
advanced and reference recipes train one epoch."""
import subprocess
import sys

import pytest

import train_imagenet
from ffcv_imagenet.cli.config import parse_config
from ffcv_imagenet.cli.train_config import SECTIONS
from ffcv_imagenet.training.checkpoint import checkpoint_dir, load_checkpoint
from ffcv_imagenet.training.logs import read_log
from ffcv_imagenet.training.schedules import Stages, lr_schedule, resolution_at
from tests.support import RECIPES, ROOT


EPOCHS = (16, 24, 32, 40, 56, 88)


def test_the_published_lengths_exist_for_both_architectures():
    names = {path.name for path in RECIPES}
    for arch in ('rn50', 'rn18'):
        assert {f'{arch}_{e}_epochs.yaml' for e in EPOCHS} <= names
    assert 'rn18_cpu_demo.yaml' in names


@pytest.mark.parametrize('path', RECIPES, ids=lambda p: p.name)
def test_recipe_parses_and_is_consistent(path):
    config = parse_config('test', ['-C', str(path)], SECTIONS)
    epochs = config['training.epochs']
    assert 0 < config['lr.peak_epoch'] < epochs
    assert 'per GPU' in path.read_text() or 'per process' in path.read_text()
    if config['resolution.stages']:
        stages = Stages.parse(config['resolution.stages'], epochs)
        assert stages.stages[-1].epoch < epochs  # every stage is reached
        return
    ramp = {k: config[f'resolution.{k}'] for k in ('min_res', 'max_res', 'start_ramp',
                                                  'end_ramp')}
    assert config['resolution.end_ramp'] < epochs  # the last epochs run at max_res
    assert resolution_at(epochs - 1, **ramp) == config['resolution.max_res']
    assert resolution_at(0, **ramp) == config['resolution.min_res']
    if path.name.endswith('_epochs.yaml'):
        assert config['training.label_smoothing'] == 0.1
        assert config['model.blurpool'] == 1
        assert (config['resolution.min_res'], config['resolution.max_res']) == (160, 192)
        assert config['validation.resolution'] == 256
        assert config['validation.crop_ratio'] == pytest.approx(224 / 256)


@pytest.mark.parametrize('arch, gpus, peak', [('rn50', 8, 1.7), ('rn18', 1, 0.5)])
def test_peak_learning_rate_matches_the_published_one(arch, gpus, peak):
    config = parse_config('test', ['-C', str(RECIPES[0].parent / f'{arch}_88_epochs.yaml')],
                          SECTIONS)
    global_batch = config['training.batch_size'] * gpus
    peak_lr = config['lr.lr'] * global_batch / config['lr.reference_batch']
    assert peak_lr == pytest.approx(peak)
    lr_at = lr_schedule('cyclic', peak_lr=peak_lr, epochs=88, steps_per_epoch=100,
                        peak_epoch=config['lr.peak_epoch'])
    assert lr_at(200) == pytest.approx(peak)


REFERENCE_TABLE = {  # the settings of the two reference trainers, key by key
    'rn50_reference_advanced.yaml': {
        'training.epochs': 90, 'resolution.stages': '0:64:256, 30:128:128, 50:224:64',
        'optimizer.name': 'adamw', 'lr.lr': 3e-4, 'optimizer.weight_decay': 1e-4,
        'lr.schedule': 'onecycle', 'model.drop_path_rate': 0.2, 'model.head': 'conv1x1',
        'model.blurpool': 0, 'ema.enabled': 1, 'training.precision': 'fp16',
        'checkpoint.best_metric': 'val_top1', 'checkpoint.best_after': 60},
    'rn50_reference_plain.yaml': {
        'training.epochs': 90, 'resolution.min_res': 224, 'resolution.max_res': 224,
        'training.batch_size': 256, 'optimizer.name': 'sgd', 'lr.lr': 0.1,
        'lr.reference_batch': 256, 'optimizer.momentum': 0.9,
        'optimizer.weight_decay': 1e-4, 'lr.schedule': 'cosine', 'lr.warmup_epochs': 5,
        'model.head': 'fc', 'model.drop_path_rate': 0.0, 'ema.enabled': 0,
        'mix.mixup_alpha': 0.0, 'mix.cutmix_alpha': 0.0, 'erase.prob': 0.0,
        'training.label_smoothing': 0.0, 'training.precision': 'fp16',
        'checkpoint.every': 10},
}


@pytest.mark.parametrize('name', sorted(REFERENCE_TABLE))
def test_the_reference_recipes_hold_the_references_settings(name):
    config = parse_config('test', ['-C', str(ROOT / 'rn50_configs' / name)], SECTIONS)
    for key, value in REFERENCE_TABLE[name].items():
        assert config[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    text = (ROOT / 'rn50_configs' / name).read_text()
    assert 'NOT a result measured on ImageNet' in text


def test_train_command_takes_a_bare_recipe_name(tmp_path):
    """The design's own command line: the recipe is found (the error is about the
    data it names, not about the recipe file)."""
    done = subprocess.run([sys.executable, str(ROOT / 'train_imagenet.py'), '--config',
                           'rn50_88_epochs.yaml', '--data.train_dataset=missing.beton',
                           '--data.val_dataset=missing.beton', '--logging.folder=run'],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == ('error: data.train_dataset: .beton file not found: '
                                   'missing.beton')


# the recipes' two decoding threads would only slow the test: numba compiles the
# decoder's parallel loop for them, slower than the serial one (BENCHMARKS.md,
# "Test-suite time")
ONE_THREAD = '--data.num_workers=1'


def test_the_cpu_advanced_recipe_trains_one_epoch(betons, tmp_path):
    train_path, val_path = betons
    folder = tmp_path / 'advanced'
    assert train_imagenet.main([
        '-C', str(ROOT / 'rn50_configs' / 'rn50_cpu_advanced.yaml'), f'--data.train_dataset={train_path}',
        f'--data.val_dataset={val_path}', '--training.batch_size=16', ONE_THREAD,
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
        f'--data.val_dataset={val_path}', extra, ONE_THREAD, '--validation.batch_size=10',
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
