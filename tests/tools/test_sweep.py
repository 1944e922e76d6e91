"""Ablation sweeps (tools/sweep.py): grid and variants parsing, run folder names, the
command's user errors, what a child's exit means, and (slow) a real two-variant sweep
that is stopped and continued."""
import csv
import re
import signal
import subprocess
import sys
import time

import pytest
from matplotlib.image import imread

from ffcv_imagenet.cli.config import ConfigError
from ffcv_imagenet.tools import sweep
from ffcv_imagenet.tools.sweep import (NAME_LIMIT, make_plan, name_variants, outcome,
                                       parse_grid, read_variants, variant_name)
from ffcv_imagenet.tools.sweep_summary import read_manifest
from ffcv_imagenet.training.logs import read_log
from tests.support import ROOT, sweep_args


PNG = b'\x89PNG\r\n\x1a\n'


# --- grid, variants and names ------------------------------------------------------------

def test_a_grid_is_every_combination_with_the_first_key_slowest():
    variants = parse_grid(['model.drop_path_rate=0,0.1', '--mix.cutmix_alpha= 0, 1'])
    assert variants == [
        {'model.drop_path_rate': '0', 'mix.cutmix_alpha': '0'},
        {'model.drop_path_rate': '0', 'mix.cutmix_alpha': '1'},
        {'model.drop_path_rate': '0.1', 'mix.cutmix_alpha': '0'},
        {'model.drop_path_rate': '0.1', 'mix.cutmix_alpha': '1'}]
    assert parse_grid(['training.epochs=4']) == [{'training.epochs': '4'}]


@pytest.mark.parametrize('items, message', [
    (['model.drop_path_rate'], "expected section.key=value, got 'model.drop_path_rate'"),
    (['drop_path_rate=0,1'], "expected section.key=value"),
    (['model.drop_path_rate=0,,1'], "--grid model.drop_path_rate: empty value"),
    (['model.drop_path_rate=0,0'], "--grid model.drop_path_rate: a value is repeated"),
    (['lr.lr=1', 'lr.lr=2'], "--grid lr.lr: the key is given twice"),
])
def test_bad_grid_syntax_names_the_item(items, message):
    with pytest.raises(ConfigError, match=message.replace('.', r'\.').replace('?', r'\?')):
        parse_grid(items)


def test_names_come_from_the_overrides_and_stay_distinct():
    assert variant_name({'model.drop_path_rate': '0.1', 'mix.cutmix_alpha': '1'}) == \
        'drop_path_rate=0.1__cutmix_alpha=1'
    # two keys ending alike keep their sections
    assert variant_name({'ema.every': '2', 'checkpoint.every': '4'}) == \
        'ema.every=2__checkpoint.every=4'
    assert variant_name({'data.train_dataset': '/a b/x.beton'}) == \
        'train_dataset=-a-b-x.beton'
    assert variant_name({}) == 'base'
    long = [variant_name({'logging.folder': 'x' * 200 + end}) for end in 'ab']
    assert len(long[0]) == len(long[1]) == NAME_LIMIT and long[0] != long[1]
    assert variant_name({'model.drop_path_rate': '0.1'}) == \
        variant_name({'model.drop_path_rate': '0.1'})  # the same folder on a rerun


def test_variants_that_would_share_a_folder_are_refused():
    with pytest.raises(ConfigError, match='share the run folder train_dataset=a-b'):
        name_variants([{'data.train_dataset': 'a b'}, {'data.train_dataset': 'a/b'}])


def test_a_variants_file_names_its_variants(tmp_path):
    path = tmp_path / 'variants.yaml'
    path.write_text("baseline:\n"
                    "strong_aug: {mix.cutmix_alpha: 1.0, erase.prob: 0.25}\n"
                    "ema:\n  ema: {enabled: true, decay: 0.999}\n")
    assert read_variants(path) == {
        'baseline': {},
        'strong_aug': {'mix.cutmix_alpha': '1.0', 'erase.prob': '0.25'},
        'ema': {'ema.enabled': '1', 'ema.decay': '0.999'}}


@pytest.mark.parametrize('text, message', [
    ('- a\n- b\n', 'expected a mapping of variant name'),
    ('"../up": {lr.lr: 1}\n', "variant name '../up' is not a folder name"),
    ('a: [1, 2]\n', 'variant a: expected a mapping'),
    ('a: {b: [\n', 'cannot parse'),
])
def test_a_bad_variants_file_is_one_line_naming_it(tmp_path, text, message):
    path = tmp_path / 'variants.yaml'
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace('[', r'\[')) as error:
        read_variants(path)
    assert str(error.value).startswith(f'--variants {path}') and '\n' not in str(error.value)


def test_a_variant_overrides_the_fixed_values_and_the_sweep_sets_folder_and_resume(tmp_path):
    plan = make_plan(str(tmp_path), ['base.yaml'], ['lr.lr=0.1,0.2'], None,
                     ['lr.lr=5', 'training.epochs=3'])
    assert list(plan.variants) == ['lr=0.1', 'lr=0.2'] and plan.keys == ['lr.lr']
    args = plan.train_args('lr=0.2')
    assert args[:2] == ['-C', 'base.yaml']
    assert '--lr.lr=0.2' in args and '--lr.lr=5' not in args and '--training.epochs=3' in args
    assert args[-2:] == [f'--logging.folder={tmp_path / "lr=0.2"}', '--checkpoint.resume=auto']


# --- user errors: one line, exit 2, before anything runs ---------------------------------

@pytest.mark.parametrize('extra, message', [
    (['--grid', 'model.dropath_rate=0,0.1'],
     "unknown config key 'model.dropath_rate'.*did you mean --model.drop_path_rate"),
    (['--grid', 'model.drop_path_rate=0,x'], "bad value for model.drop_path_rate: 'x'"),
    (['--grid', 'model.drop_path_rate=0,2'], "model.drop_path_rate must be in"),
    (['--grid', 'logging.folder=a,b'], 'logging.folder is set by the sweep'),
    (['-C', 'no_such_recipe.yaml', '--grid', 'lr.lr=1,2'],
     'config file not found: no_such_recipe.yaml'),
    (['--grid', 'lr.lr=1,2', '--set', 'data.val_dataset=/nowhere/val.beton'],
     'data.val_dataset: .beton file not found: /nowhere/val.beton'),
    ([], 'nothing to sweep'),
    (['--gpus', '0,7', '--grid', 'lr.lr=1,2'], '--gpus 0,7'),
])
def test_user_errors_exit_2_with_one_line_and_start_nothing(betons, tmp_path, capsys, extra,
                                                             message, monkeypatch):
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '0,1')
    out = tmp_path / 'sweep'
    assert sweep.run(sweep_args(betons, out, *extra)) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith('error: ')
    assert re.search(message, error), error
    assert not out.exists()


def test_what_an_exit_means():
    assert outcome(0, finished=True, stopping=False) == 'finished'
    assert outcome(-9, finished=True, stopping=True) == 'finished'  # final.pt is written
    assert outcome(75, finished=False, stopping=False) == 'interrupted'
    assert outcome(-signal.SIGTERM, finished=False, stopping=True) == 'interrupted'
    assert outcome(-signal.SIGTERM, finished=False, stopping=False) == 'failed'
    assert outcome(2, finished=False, stopping=True) == 'failed'
    assert outcome(0, finished=False, stopping=False) == 'incomplete'


# --- a real sweep, stopped and continued -------------------------------------------------

def _events(run_dir):
    return [record['event'] for record in read_log(run_dir)]


def _wait_for(condition, process, timeout=180.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, 'the sweep ended before it could be interrupted'
        assert time.monotonic() < deadline, 'timed out'
        time.sleep(0.1)


@pytest.mark.slow
def test_a_two_variant_sweep_is_interrupted_and_resumed(betons, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the children import this checkout's package
    out = tmp_path / 'sweep'
    argv = sweep_args(betons, out, '--grid', 'model.drop_path_rate=0,0.1')
    first, second = out / 'drop_path_rate=0', out / 'drop_path_rate=0.1'
    with open(tmp_path / 'sweep.out', 'w') as output:
        process = subprocess.Popen([sys.executable, '-m', 'ffcv_imagenet', 'sweep', *argv],
                                   stdout=output, stderr=subprocess.STDOUT)
    try:
        # the second variant is training (its stop signal handler is in place)
        _wait_for(lambda: 'start' in _events(second), process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 75, (tmp_path / 'sweep.out').read_text()
    finally:
        process.kill()
    assert (first / 'checkpoints' / 'final.pt').is_file()
    assert not (second / 'checkpoints' / 'final.pt').exists()
    assert read_manifest(out)['outcomes'] == {
        'drop_path_rate=0': {'status': 'finished', 'exit_code': 0},
        'drop_path_rate=0.1': {'status': 'interrupted', 'exit_code': 75}}
    assert '| drop_path_rate=0.1 | 0.1 | interrupted |' in (out / 'summary.md').read_text()
    first_log = (first / 'log.jsonl').read_text()

    assert sweep.run(argv) == 0  # the same command again
    assert (first / 'log.jsonl').read_text() == first_log  # not trained again
    assert _events(second) == ['start', 'preempted', 'resume', 'epoch', 'end']
    table = list(csv.DictReader(open(out / 'summary.csv')))
    assert [(row['variant'], row['model.drop_path_rate'], row['status'], row['epochs_done'])
            for row in table] == [('drop_path_rate=0', '0', 'finished', '1'),
                                  ('drop_path_rate=0.1', '0.1', 'finished', '1')]
    for row, run_dir in zip(table, (first, second)):
        [epoch] = read_log(run_dir, 'epoch')
        assert float(row['best_val_top1']) == float(row['final_val_top1']) == epoch['val_top1']
        assert float(row['final_val_top5']) == epoch['val_top5']
        assert float(row['final_train_loss']) == epoch['train_loss']
        assert float(row['images_per_sec']) == pytest.approx(epoch['images_per_sec'])
    markdown = (out / 'summary.md').read_text()
    assert markdown.count('| finished |') == 2
    assert (out / 'val_top1.png').read_bytes()[:8] == PNG
    assert imread(out / 'val_top1.png').shape[0] > 100
