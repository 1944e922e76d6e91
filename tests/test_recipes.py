"""Every shipped recipe parses, and its numbers say what its comments promise."""
from pathlib import Path

import pytest

from ffcv_imagenet.train_config import SECTIONS
from ffcv_imagenet.config import parse_config
from ffcv_imagenet.schedules import lr_schedule, resolution_at

RECIPES = sorted((Path(__file__).resolve().parents[1] / 'rn50_configs').glob('*.yaml'))
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
    ramp = {k: config[f'resolution.{k}'] for k in ('min_res', 'max_res', 'start_ramp',
                                                  'end_ramp')}
    assert config['resolution.end_ramp'] < epochs  # the last epochs run at max_res
    assert resolution_at(epochs - 1, **ramp) == config['resolution.max_res']
    assert resolution_at(0, **ramp) == config['resolution.min_res']
    assert 'per GPU' in path.read_text() or 'per process' in path.read_text()
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
