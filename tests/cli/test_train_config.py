"""The training config's checks (cli/train_config.py)."""
import pytest

from ffcv_imagenet.cli.config import ConfigError


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


# --- training.parity=ffcv and the keys it sets ---------------------------------------------

PARITY_KEYS = {'training.precision': 'fp16', 'optimizer.decay_rule': 'names',
               'lr.start_fraction': 1e-4, 'lr.interpolate_epochs': 1}


RECIPE = ('-C', 'rn50_88_epochs.yaml')  # the data paths and the rest; precision: auto


def _parse(*argv):
    from ffcv_imagenet.cli.config import parse_config
    from ffcv_imagenet.cli.train_config import SECTIONS
    return parse_config('test', list(argv), SECTIONS)


def _yaml(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


def test_parity_ffcv_sets_its_keys_over_the_recipe_and_none_sets_nothing():
    parity = _parse('-C', 'rn50_88_epochs.yaml', '--training.parity=ffcv')
    assert {key: parity[key] for key in PARITY_KEYS} == PARITY_KEYS
    plain = _parse('-C', 'rn50_88_epochs.yaml')  # the recipe says precision: auto
    assert plain['training.parity'] == 'none'
    assert {key: plain[key] for key in PARITY_KEYS} == {
        'training.precision': 'auto', 'optimizer.decay_rule': 'types',
        'lr.start_fraction': 0.0, 'lr.interpolate_epochs': 0}


def test_the_keys_parity_sets_work_without_it():
    config = _parse('-C', 'rn50_88_epochs.yaml', '--optimizer.decay_rule=names',
                    '--lr.start_fraction=0.01', '--lr.interpolate_epochs=1')
    assert (config['optimizer.decay_rule'], config['lr.start_fraction'],
            config['lr.interpolate_epochs']) == ('names', 0.01, 1)
    assert config['training.precision'] == 'auto'  # the rest stays as configured


@pytest.mark.parametrize('flag, key', [('--training.parity=fp16', 'training.parity'),
                                       ('--optimizer.decay_rule=bn', 'optimizer.decay_rule'),
                                       ('--lr.interpolate_epochs=2', 'lr.interpolate_epochs')])
def test_a_bad_parity_or_rule_value_is_one_line_naming_the_key(flag, key):
    with pytest.raises(ConfigError) as caught:
        _parse('-C', 'rn50_88_epochs.yaml', flag)
    assert str(caught.value).startswith(f"bad value for {key}: ")
    assert '\n' not in str(caught.value)


@pytest.mark.parametrize('value', ['1.0', '-0.5'])
def test_a_start_fraction_outside_0_to_1_is_refused(value):
    from ffcv_imagenet.cli.train_config import check_values
    config = _parse('-C', 'rn50_88_epochs.yaml', f'--lr.start_fraction={value}')
    with pytest.raises(ConfigError, match=r'^lr.start_fraction must be in \[0, 1\), got '):
        check_values(config)


@pytest.mark.parametrize('flag', ['--training.precision=bf16', '--training.precision=auto',
                                  '--optimizer.decay_rule=types', '--lr.start_fraction=0',
                                  '--lr.interpolate_epochs=0'])
def test_a_key_that_contradicts_parity_on_the_command_line_is_one_line_naming_both(flag):
    key, value = flag[2:].split('=')
    with pytest.raises(ConfigError) as caught:
        _parse('-C', 'rn50_88_epochs.yaml', '--training.parity=ffcv', flag)
    message = str(caught.value)
    assert message.startswith(f"{key}=") and 'contradicts training.parity=ffcv' in message
    assert f"sets {key}={PARITY_KEYS[key]}" in message and '\n' not in message


def test_the_same_value_as_parity_is_no_contradiction():
    config = _parse('-C', 'rn50_88_epochs.yaml', '--training.parity=ffcv',
                    '--training.precision=fp16', '--lr.start_fraction=0.0001')
    assert config['training.precision'] == 'fp16'


def test_parity_wins_over_earlier_files_and_not_over_its_own_or_later_ones(tmp_path):
    earlier = _yaml(tmp_path, 'earlier.yaml', 'training:\n  precision: bf16\n')
    switch = _yaml(tmp_path, 'switch.yaml', 'training:\n  parity: ffcv\n')
    assert _parse(*RECIPE, '-C', earlier, '-C', switch)['training.precision'] == 'fp16'
    both = _yaml(tmp_path, 'both.yaml', 'training:\n  parity: ffcv\n  precision: bf16\n')
    with pytest.raises(ConfigError, match='^training.precision=bf16 contradicts '
                                          'training.parity=ffcv'):
        _parse(*RECIPE, '-C', both)
    with pytest.raises(ConfigError, match='^training.precision=bf16 contradicts'):
        _parse(*RECIPE, '-C', switch, '-C', earlier)
    with pytest.raises(ConfigError, match='^optimizer.decay_rule=types contradicts'):
        _parse(*RECIPE, '-C', switch, '--optimizer.decay_rule=types')


@pytest.mark.parametrize('schedule', ['cosine', 'onecycle'])
def test_parity_refuses_a_schedule_the_published_trainer_lacks(schedule):
    from ffcv_imagenet.cli.train_config import check_values
    config = _parse('-C', 'rn50_88_epochs.yaml', '--training.parity=ffcv',
                    f'--lr.schedule={schedule}')
    with pytest.raises(ConfigError, match=f'^lr.schedule={schedule} cannot be combined '
                                          'with training.parity=ffcv'):
        check_values(config)
    check_values(_parse('-C', 'rn50_88_epochs.yaml', '--training.parity=ffcv',
                        '--lr.schedule=step'))  # ffcv-imagenet's other schedule


def test_parity_trains_without_autocast_on_the_cpu():
    import torch
    from ffcv_imagenet.cli.recipe import resolve_config_precision
    config = _parse('-C', 'rn50_88_epochs.yaml', '--training.parity=ffcv')
    assert resolve_config_precision(config, torch.device('cpu')).dtype is None
    assert resolve_config_precision(config, torch.device('cuda')).dtype == torch.float16
    plain = _parse('-C', 'rn50_88_epochs.yaml', '--training.precision=fp16')
    with pytest.raises(ConfigError, match='^training.precision: .*fp16 needs a CUDA device'):
        resolve_config_precision(plain, torch.device('cpu'))
