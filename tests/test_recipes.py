"""The shipped recipes (rn50_configs/): every one parses, its numbers say what its
comments promise, the twelve published ones hold ffcv-imagenet's settings (written out
below from its files: the learning rate at the first, peak, last and forty other
iterations, the resolution of every epoch, batch, optimizer, smoothing, BlurPool and
validation) with the weight-decay rule differing only where docs/recipes.md says, and
with --training.parity=ffcv also its learning rate from iteration 0 on, its weight-decay
rule and its fp16 with a gradient scaler; each names the storage preset of the data it
was published on (and the CPU demo recipe that of make demo's conversion); the
reference trainers' settings hold, the train command finds a recipe by its bare name,
and the CPU versions of the advanced and reference recipes train one epoch."""
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import train_imagenet
from ffcv_imagenet.cli.config import ConfigError, parse_config
from ffcv_imagenet.cli.network import build_config_optimizer
from ffcv_imagenet.cli.recipe import _schedules, resolve_config_precision
from ffcv_imagenet.cli.train_config import SECTIONS, check_values, per_gpu_batch
from ffcv_imagenet.data.write.storage import Storage, find_preset
from ffcv_imagenet.training.checkpoint import checkpoint_dir, load_checkpoint
from ffcv_imagenet.training.logs import read_log
from ffcv_imagenet.training.models import BlurConv2d, build_model
from ffcv_imagenet.training.optim import param_groups
from ffcv_imagenet.training.schedules import Stages, resolution_at
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


# What ffcv-imagenet's published table trained with, written out from its files
# (https://github.com/libffcv/ffcv-imagenet): rn50_configs/ and rn18_configs/
# rn{50,18}_{E}_epochs.yaml. Both archs: lr_schedule_type cyclic, lr_peak_epoch 2 (the
# rn50 files leave it to train_imagenet.py's default, 2), momentum 0.9, label_smoothing
# 0.1, use_blurpool 1, min_res 160, max_res 192, validation resolution 256, lr_tta true;
# train_imagenet.py: DEFAULT_CROP_RATIO = 224/256. Its batch_size is per process.
PUBLISHED_RAMP = {16: (11, 13), 24: (17, 20), 32: (23, 27), 40: (29, 34), 56: (41, 48),
                  88: (65, 76)}  # epochs: (start_ramp, end_ramp)
PUBLISHED = {'rn50': {'arch': 'resnet50', 'gpus': 8, 'batch_size': 512, 'lr': 1.7,
                      'weight_decay': 1e-4},
             'rn18': {'arch': 'resnet18', 'gpus': 1, 'batch_size': 1024, 'lr': 0.5,
                      'weight_decay': 5e-5}}
IMAGENET_TRAIN = 1_281_167


def published_lr(iteration: int, steps: int, epochs: int, lr: float) -> float:
    """train_imagenet.py's rate: get_cyclic_lr at whole epochs (1e-4 x lr at epoch 0, lr
    at epoch 2, 0 at the end), interpolated over an epoch's iterations in train_loop."""
    epoch, step = divmod(iteration, steps)
    at = lambda e: float(np.interp(e, [0, 2, epochs], [1e-4 * lr, lr, 0]))  # noqa: E731
    return float(np.interp(step, [0, steps], [at(epoch), at(epoch + 1)]))


def published_resolution(epoch: int, start: int, end: int) -> int:
    """train_imagenet.py's get_resolution: 160 px up to start_ramp, 192 from end_ramp,
    in between interpolated and rounded to a multiple of 32."""
    if epoch <= start:
        return 160
    if epoch >= end:
        return 192
    return int(np.round(np.interp(epoch, [start, end], [160, 192]) / 32)) * 32


class _Epoch:
    """What the schedule builder asks of a train loader: its steps per epoch."""
    def __init__(self, steps):
        self.steps = steps

    def __len__(self):
        return self.steps


@pytest.mark.parametrize('parity', ['none', 'ffcv'])
@pytest.mark.parametrize('arch', sorted(PUBLISHED))
@pytest.mark.parametrize('epochs', EPOCHS)
def test_the_published_recipes_settings_hold(arch, epochs, parity):
    published = PUBLISHED[arch]
    gpus, lr = published['gpus'], published['lr']
    config = parse_config('test', ['-C', str(ROOT / 'rn50_configs' /
                                             f'{arch}_{epochs}_epochs.yaml'),
                                   f'--training.parity={parity}'], SECTIONS)
    assert config['model.arch'] == published['arch'] and config['training.epochs'] == epochs
    assert per_gpu_batch(config, gpus, None) == published['batch_size']
    assert (config['lr.schedule'], config['lr.peak_epoch']) == ('cyclic', 2)
    assert config['optimizer.name'] == 'sgd' and config['optimizer.momentum'] == 0.9
    assert config['optimizer.weight_decay'] == pytest.approx(published['weight_decay'])
    assert config['training.label_smoothing'] == 0.1 and config['model.blurpool'] == 1
    assert (config['validation.resolution'], config['validation.tta']) == (256, 1)
    assert config['validation.crop_ratio'] == pytest.approx(224 / 256)

    steps = IMAGENET_TRAIN // (published['batch_size'] * gpus)  # drop_last
    schedules = _schedules(config, _Epoch(steps), gpus, None)
    start, end = PUBLISHED_RAMP[epochs]
    assert [schedules.res_at(e) for e in range(epochs)] == [
        published_resolution(e, start, end) for e in range(epochs)]
    last = epochs * steps - 1
    checked = {0, 1, steps // 2, steps, 2 * steps - 1, 2 * steps, 2 * steps + 1, last,
               *np.random.default_rng(epochs).integers(0, last, 40).tolist()}
    for iteration in sorted(checked):
        ours, theirs = schedules.lr_at(iteration), published_lr(iteration, steps, epochs, lr)
        if iteration < 2 * steps and parity == 'none':  # listed: a warm-up from 0
            assert abs(ours - theirs) <= 1e-4 * lr + 1e-12, iteration
        else:
            assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12), iteration
    assert schedules.lr_at(2 * steps) == pytest.approx(lr)
    if parity == 'ffcv':
        assert_the_published_decay_and_precision(config)


def assert_the_published_decay_and_precision(config):
    """train_imagenet.py decays every parameter whose name lacks 'bn' and trains with
    fp16 autocast and a GradScaler."""
    model = build_model(config['model.arch'], blurpool=bool(config['model.blurpool']))
    decay, no_decay = build_config_optimizer(config, model, torch.device('cpu')).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in decay['params']} == {n for n in names.values()
                                                       if 'bn' not in n}
    assert {names[id(p)] for p in no_decay['params']} == {n for n in names.values()
                                                          if 'bn' in n}
    assert decay['weight_decay'] == config['optimizer.weight_decay'] > 0
    assert no_decay['weight_decay'] == 0
    precision = resolve_config_precision(config, torch.device('cuda'))
    assert precision.dtype == torch.float16 and precision.needs_scaler
    if torch.cuda.is_available():  # a GradScaler for 'cuda' disables itself without one
        assert precision.scaler().is_enabled()


# The storage of ffcv-imagenet's published results (its README, "Training Details" and the
# write_imagenet.sh call): ResNet-50 "50% JPEG 500px side length", ResNet-18 "10% JPEG
# 400px side length", JPEG quality 90; the rest of the images raw ('proportion' mode).
PUBLISHED_STORAGE = {'rn50': Storage.of(500, 'proportion', 0.5, 90),
                     'rn18': Storage.of(400, 'proportion', 0.1, 90)}


@pytest.mark.parametrize('arch', sorted(PUBLISHED_STORAGE))
@pytest.mark.parametrize('epochs', EPOCHS)
def test_each_published_recipe_names_the_storage_it_was_published_on(arch, epochs):
    config = parse_config('test', ['-C', str(ROOT / 'rn50_configs' /
                                             f'{arch}_{epochs}_epochs.yaml')], SECTIONS)
    assert find_preset(config['data.storage_preset']).storage == PUBLISHED_STORAGE[arch]


def _demo_conversion_presets() -> set[str]:
    """The presets the Makefile's rules for make demo's two .betons convert with."""
    text = (ROOT / 'Makefile').read_text()
    presets = set()
    for target in ('$(BETONS)/train.beton:', '$(BETONS)/val.beton:'):
        rule = text[text.index(target):].split('\n\n')[0]
        presets |= set(re.findall(r'--(?:cfg\.)?preset[= ](\S+)', rule)) or {''}
    return presets


def test_the_demo_recipe_expects_what_make_demo_converts_with():
    config = parse_config('test', ['-C', 'rn18_cpu_demo.yaml'], SECTIONS)
    assert _demo_conversion_presets() == {config['data.storage_preset']} == {'fast-256'}


def test_an_unknown_storage_preset_in_a_recipe_is_one_line_naming_the_key():
    config = parse_config('test', ['-C', 'rn18_cpu_demo.yaml',
                                   '--data.storage_preset=rn50'], SECTIONS)
    with pytest.raises(ConfigError) as err:
        check_values(config)
    assert str(err.value) == ("data.storage_preset: unknown storage preset 'rn50' (known: "
                              "rn50-published, rn18-published, fast-256)")


@pytest.mark.parametrize('arch, downsampled, strided', [('resnet50', (1, 2, 3, 4), 'conv2'),
                                                        ('resnet18', (2, 3, 4), 'conv1')])
def test_blurpool_layers_match_and_weight_decay_differs_only_where_listed(arch, downsampled,
                                                                          strided):
    """BlurPool: train_imagenet.py's rule (every Conv2d with stride > 1 and at least 16
    input channels) picks the strided 3x3 conv and the downsample conv of layers 2-4.
    Weight decay: it decays every parameter whose name lacks 'bn'; here norms and
    biases are exempt by module type, so the downsample BatchNorms and fc.bias differ,
    unless optimizer.decay_rule=names."""
    model = build_model(arch, blurpool=True)
    assert {n for n, m in model.named_modules() if isinstance(m, BlurConv2d)} == {
        f'layer{i}.0.{conv}' for i in (2, 3, 4) for conv in (strided, 'downsample.0')}
    names = {id(p): n for n, p in model.named_parameters()}
    ours = {names[id(p)] for p in param_groups(model, 1e-4)[0]['params']}
    theirs = {n for n in names.values() if 'bn' not in n}
    assert ours < theirs
    assert theirs - ours == {'fc.bias'} | {f'layer{i}.0.downsample.1.{w}'
                                           for i in downsampled for w in ('weight', 'bias')}
    assert {names[id(p)] for p in param_groups(model, 1e-4, 'names')[0]['params']} == theirs


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
