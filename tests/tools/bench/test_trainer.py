"""bench trainer (tools/bench/trainer.py): the training command run and timed whole,
its breakdown and its projection."""
import json

import pytest

from ffcv_imagenet.cli.config import ConfigError
from ffcv_imagenet.tools.bench import command
from ffcv_imagenet.tools.bench.projection import project
from ffcv_imagenet.tools.bench.trainer import recipe_plan, shortening, train_argv
from tests.support import tiny_args

# what the bench's own shortening sets, and where the run goes: not passed with --set
SET_BY_THE_BENCH = ('--training.epochs=', '--resolution.start_ramp=',
                    '--resolution.end_ramp=', '--logging.folder=')


def tiny_sets(betons):
    """tiny_args as --set options, at 32 -> 48 px."""
    args = [arg for arg in tiny_args(betons, 'unused', '--resolution.max_res=48')
            if not arg.startswith(SET_BY_THE_BENCH)]
    return [part for arg in args for part in ('--set', arg[2:])]


@pytest.mark.slow
def test_the_trainer_breakdown_adds_up_and_the_projection_follows_from_it(
        betons, tmp_path, capsys):
    out, saved = tmp_path / 'run', tmp_path / 'trainer.json'
    command.main(['trainer', *tiny_sets(betons), '--out', str(out), '--gpus', '4',
                  '--dataset-images', '1000', '--val-images', '100', '--json', str(saved),
                  '--variant-set', 'validation.every=2',
                  '--variant-set', 'validation.start_epoch=8'])
    printed = capsys.readouterr().out
    for row in ('| start-up |', '| training steps |', '| loader waits |', '| validation |',
                '| checkpoint writes |', '| resolution switch |', 'perfect scaling'):
        assert row in printed, row
    result = json.loads(saved.read_text())
    measured, epochs = result['measured'], result['measured']['epochs']
    assert [e['resolution'] for e in epochs] == [32, 32, 48]  # across the switch
    for key in ('startup_s', 'steps_s', 'data_wait_s', 'val_s', 'checkpoint_s', 'switch_s'):
        assert measured[key] >= 0, key
    assert measured['startup_s'] > 0 and measured['steps_s'] > 0
    assert measured['val_s'] > 0 and measured['checkpoint_s'] > 0  # every epoch does both
    assert all(c['seconds'] > 0 and c['resolution'] in (32, 48) for c in measured['compile'])
    for epoch in epochs:
        assert epoch['steps_s'] >= 0, epoch
    # the parts, steps included, add up to the run's own clock: launch to last epoch line
    assert measured['total_s'] == pytest.approx(measured['wall_s'], rel=0.05, abs=1.0)
    assert sum(e['epoch_wall_s'] for e in epochs) < measured['wall_s']
    # the projection is the pure function of what was measured
    assert result['projection'] == project(measured, result['plan'], gpus=4,
                                           dataset_images=1000, val_images=100)
    assert result['projection']['gpus'] == 4 and result['projection']['total_s'] > 0
    # the variant: the same recipe and measured parts, validated less often
    plan, variant = result['projection'], result['variant_projection']
    assert variant == project(measured, result['variant_plan'], gpus=4, dataset_images=1000,
                              val_images=100)
    assert variant['validations'] < plan['validations'] and variant['val_s'] < plan['val_s']
    assert variant['train_s'] == plan['train_s']
    assert '### Saved by --validation.every=2 --validation.start_epoch=8' in printed


def test_the_settings_follow_the_shortening_so_that_they_win():
    argv = train_argv(['rn18_cpu_demo'], ['training.epochs=5'], 'runs/x', shortening(3, 1, 2))
    assert argv[:2] == ['-C', 'rn18_cpu_demo']
    assert argv.index('--training.epochs=3') < argv.index('--training.epochs=5')
    assert argv[-1] == '--logging.folder=runs/x'


@pytest.mark.parametrize('bad', ['epochs=3', 'training.epochs'])
def test_a_setting_without_section_key_and_value_is_refused(bad):
    with pytest.raises(ConfigError, match='section.key=value'):
        train_argv([], [bad], 'out', [])


def test_the_plan_of_the_32_epoch_recipe_ramps_from_160_to_192():
    plan = recipe_plan(['rn50_32_epochs'], [])
    resolutions = plan['resolutions']
    assert len(resolutions) == 32
    assert resolutions == sorted(resolutions)
    assert (resolutions[0], resolutions[-1]) == (160, 192)
    assert (plan['eval_every'], plan['last_every_epochs'], plan['arch']) == (1, 1, 'resnet50')


def test_the_plan_takes_the_settings_and_time_periods():
    plan = recipe_plan(['rn50_32_epochs'], ['training.epochs=4', 'checkpoint.last_every=30m',
                                            'validation.every=2'])
    assert plan['resolutions'] == [160] * 4
    assert (plan['last_every_epochs'], plan['last_every_seconds']) == (0, 1800.0)
    assert plan['eval_every'] == 2


@pytest.mark.parametrize('args, message', [
    (['--project', 'no_such_recipe'], 'no_such_recipe'),
    (['--set', 'resolution.min_res=0'], 'resolution'),
])
def test_a_bad_recipe_stops_the_bench_before_it_trains(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        command.main(['trainer', '-C', 'rn18_cpu_demo', '--out', str(tmp_path / 'run'), *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / 'run').exists()


def test_a_used_run_folder_is_refused(tmp_path, capsys):
    (tmp_path / 'log.jsonl').write_text('')
    with pytest.raises(SystemExit) as exit_info:
        command.main(['trainer', '-C', 'rn18_cpu_demo', '--out', str(tmp_path)])
    assert exit_info.value.code == 2
    assert 'not empty' in capsys.readouterr().err
