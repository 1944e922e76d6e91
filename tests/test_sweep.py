"""Ablation sweeps: grid and variants parsing, run folder names, the scheduling of
children onto GPUs, the summary from hand-written logs, and (slow) a real two-variant
sweep that is stopped and continued."""
import csv
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from matplotlib.image import imread

from ffcv_imagenet.cli.config import ConfigError
from ffcv_imagenet.tools import sweep
from ffcv_imagenet.tools.sweep import (NAME_LIMIT, make_plan, name_variants,
                                       outcome, parse_grid, read_variants, variant_name)
from ffcv_imagenet.tools.sweep_runner import Job, Runner, gpu_slots
from ffcv_imagenet.tools.sweep_summary import (COLUMNS, format_markdown, lock_sweep,
                                               read_manifest, run_metrics, summarise,
                                               summary_rows, sweep_figure, wall_seconds,
                                               write_manifest)
from ffcv_imagenet.training.plots import epoch_series
from ffcv_imagenet.training.logs import read_log
from train_args import tiny_args

ROOT = Path(__file__).resolve().parents[1]
PNG = b'\x89PNG\r\n\x1a\n'


# --- grid, variants and names ------------------------------------------------------

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


# --- user errors: one line, exit 2, before anything runs ---------------------------

def _sweep_args(betons, out, *extra):
    fixed = [arg[2:] for arg in tiny_args(betons, 'unused', '--training.epochs=1',
                                          '--resolution.max_res=32',
                                          '--resolution.end_ramp=0', '--lr.peak_epoch=0.5',
                                          '--logging.log_every=1')
             if not arg.startswith('--logging.folder')]
    return ['--out', str(out), *(part for value in fixed for part in ('--set', value)),
            *extra]


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
    assert sweep.run(_sweep_args(betons, out, *extra)) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith('error: ')
    assert re.search(message, error), error
    assert not out.exists()


# --- where variants run ----------------------------------------------------------

def test_gpu_slots():
    visible = ['2', '3', '5']
    assert gpu_slots(None, 1, visible) == [None]
    assert gpu_slots(None, 3, []) == [None, None, None]
    assert gpu_slots('auto', 1, visible) == ['2', '3', '5']
    assert gpu_slots('2', 1, visible) == ['2', '3']
    assert gpu_slots('0,2', 1, visible) == ['2', '5']
    assert gpu_slots('1,', 1, visible) == ['3']
    for spec in ('0', '4', '3,', '0,0', 'x'):
        with pytest.raises(ConfigError, match=f'--gpus {spec}'):
            gpu_slots(spec, 1, visible)
    with pytest.raises(ConfigError, match='no GPU visible'):
        gpu_slots('auto', 1, [])
    with pytest.raises(ConfigError, match='--parallel'):
        gpu_slots(None, 0, [])


# each fake variant appends "<CUDA_VISIBLE_DEVICES> <start> <end>" to the file it is given
FAKE_VARIANT = ("import os, sys, time; start = time.time(); time.sleep(float(sys.argv[2])); "
                "open(sys.argv[1], 'a').write("
                "f\"{os.environ.get('CUDA_VISIBLE_DEVICES')} {start} {time.time()}\\n\"); "
                "sys.exit(int(sys.argv[3]))")


def _fake_jobs(tmp_path, seconds, codes):
    record = tmp_path / 'record.txt'
    return record, [Job(f'v{i}', [sys.executable, '-c', FAKE_VARIANT, str(record),
                                  str(seconds), str(code)], tmp_path / f'v{i}.log')
                    for i, code in enumerate(codes)]


def test_variants_run_one_per_gpu_side_by_side(tmp_path):
    record, jobs = _fake_jobs(tmp_path, 1.0, [0, 3, 0, 0, 0])
    started, ended = [], []
    runner = Runner(['4', '7'], lambda job, slot: started.append((job.name, slot)),
                    lambda job, code, stopping: ended.append((job.name, code, stopping)),
                    poll_s=0.05)
    assert runner.run(jobs) is None
    assert [name for name, _ in started] == ['v0', 'v1', 'v2', 'v3', 'v4']
    assert sorted(ended) == [('v0', 0, False), ('v1', 3, False), ('v2', 0, False),
                             ('v3', 0, False), ('v4', 0, False)]  # a failure goes on
    runs = [(gpu, float(start), float(end)) for gpu, start, end
            in (line.split() for line in record.read_text().splitlines())]
    assert len(runs) == 5 and {gpu for gpu, _, _ in runs} == {'4', '7'}
    assert sorted(gpu for gpu, _, _ in runs) == sorted(slot for _, slot in started)
    overlapping = [(a, b) for i, a in enumerate(runs) for b in runs[i + 1:]
                   if a[1] < b[2] and b[1] < a[2]]
    assert overlapping, 'two GPUs, yet the variants ran one after another'
    assert all(a[0] != b[0] for a, b in overlapping), 'two variants shared a GPU'
    for _, start, _ in runs:  # never more variants at once than GPUs
        assert sum(s <= start < e for _, s, e in runs) <= 2


def test_a_preempted_variant_stops_the_sweep_and_the_others(tmp_path):
    record, jobs = _fake_jobs(tmp_path, 0.3, [75, 0, 0])
    jobs[1].command[4] = '60'  # a long variant beside the preempted one
    ended = []
    runner = Runner([None, None], lambda job, slot: None,
                    lambda job, code, stopping: ended.append((job.name, code, stopping)),
                    poll_s=0.05)
    began = time.monotonic()
    assert runner.run(jobs) == 'preempted'
    assert time.monotonic() - began < 30
    assert ended == [('v0', 75, False), ('v1', -signal.SIGTERM, True)]  # v2 never ran


def test_a_signal_to_the_sweep_reaches_its_children(tmp_path):
    _, jobs = _fake_jobs(tmp_path, 60, [0, 0])
    ended = []
    runner = Runner([None], lambda job, slot: signal.raise_signal(signal.SIGTERM),
                    lambda job, code, stopping: ended.append((job.name, code, stopping)),
                    poll_s=0.05)
    before = signal.getsignal(signal.SIGTERM)
    assert runner.run(jobs) == 'SIGTERM'
    assert ended == [('v0', -signal.SIGTERM, True)]
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is given back


def test_what_an_exit_means():
    assert outcome(0, finished=True, stopping=False) == 'finished'
    assert outcome(-9, finished=True, stopping=True) == 'finished'  # final.pt is written
    assert outcome(75, finished=False, stopping=False) == 'interrupted'
    assert outcome(-signal.SIGTERM, finished=False, stopping=True) == 'interrupted'
    assert outcome(-signal.SIGTERM, finished=False, stopping=False) == 'failed'
    assert outcome(2, finished=False, stopping=True) == 'failed'
    assert outcome(0, finished=False, stopping=False) == 'incomplete'


# --- the summary from hand-written logs ---------------------------------------------

def _write_log(run_dir, records, epochs=3, final=False):
    run_dir.mkdir(parents=True)
    (run_dir / 'config.json').write_text(json.dumps({'training.epochs': epochs}))
    with open(run_dir / 'log.jsonl', 'w') as handle:
        # a string is a line as it is: a half-written last line
        handle.writelines((record if isinstance(record, str) else json.dumps(record)) + '\n'
                          for record in records)
    if final:
        (run_dir / 'checkpoints').mkdir()
        (run_dir / 'checkpoints' / 'final.pt').write_bytes(b'')


def _epoch(epoch, time_s, top1=None, top5=None, loss=2.0, rate=100.0, seconds=10.0):
    return {'event': 'epoch', 'time': time_s, 'epoch': epoch, 'train_loss': loss,
            'val_top1': top1, 'val_top5': top5, 'images_per_sec': rate, 'epoch_time': seconds}


@pytest.fixture
def sweep_dir(tmp_path):
    """A sweep of three variants: one finished after a resume (epoch 2 logged twice),
    one failed after an epoch without validation, one not started."""
    out = tmp_path / 'sweep'
    _write_log(out / 'lr=0.1', [
        {'event': 'start', 'time': 1000.0}, _epoch(1, 1010.0, 0.30, 0.60, 3.0),
        _epoch(2, 1020.0, 0.10, 0.50, 9.0),  # crashed before its checkpoint: replaced
        {'event': 'resume', 'time': 5000.0}, _epoch(2, 5015.0, 0.50, 0.70, 2.5, 300.0, 20.0),
        _epoch(3, 5030.0, 0.40, 0.90, 2.0), {'event': 'end', 'time': 5031.0}], final=True)
    _write_log(out / 'lr=0.2', [{'event': 'start', 'time': 100.0},
                                _epoch(1, 110.0, loss=4.0), '{"event": "epo'])
    write_manifest(out, {'configs': ['base.yaml'], 'fixed': {'training.epochs': '3'},
                         'keys': ['lr.lr'],
                         'variants': {'lr=0.1': {'lr.lr': '0.1'}, 'lr=0.2': {'lr.lr': '0.2'},
                                      'lr=0.3': {'lr.lr': '0.3'}},
                         'outcomes': {'lr=0.2': {'status': 'failed', 'exit_code': 1}}})
    return out


def test_run_metrics_follow_the_last_record_of_each_epoch(sweep_dir):
    assert run_metrics(sweep_dir / 'lr=0.1') == pytest.approx({
        'epochs_done': 3, 'epochs_total': 3, 'best_epoch': 2, 'best_val_top1': 0.5,
        'best_val_top5': 0.9, 'final_val_top1': 0.4, 'final_val_top5': 0.9,
        'final_train_loss': 2.0, 'wall_time_s': 20.0 + 31.0, 'train_time_s': 40.0,
        'images_per_sec': (100 * 10 + 300 * 20 + 100 * 10) / 40})
    unvalidated = run_metrics(sweep_dir / 'lr=0.2')
    assert unvalidated['best_val_top1'] is None and unvalidated['final_val_top5'] is None
    assert unvalidated['final_train_loss'] == 4.0 and unvalidated['epochs_done'] == 1
    assert run_metrics(sweep_dir / 'missing')['epochs_done'] == 0


def test_wall_time_counts_each_invocation_from_its_start():
    assert wall_seconds([{'event': 'x', 'time': 5.0}]) is None
    assert wall_seconds([{'event': 'start', 'time': 5.0}, {'event': 'epoch', 'time': 7.5},
                         {'event': 'resume', 'time': 100.0},
                         {'event': 'end', 'time': 101.0}]) == pytest.approx(3.5)


def test_summary_tables_and_plot(sweep_dir, capsys):
    rows = summary_rows(sweep_dir, read_manifest(sweep_dir))
    assert [(row['variant'], row['lr.lr'], row['status']) for row in rows] == [
        ('lr=0.1', '0.1', 'finished'), ('lr=0.2', '0.2', 'failed (exit 1)'),
        ('lr=0.3', '0.3', 'pending')]
    assert sweep.run(['--summarise-only', str(sweep_dir)]) == 0
    assert capsys.readouterr().out.split() == [
        str(sweep_dir / name) for name in ('summary.md', 'summary.csv', 'val_top1.png')]
    table = list(csv.DictReader(open(sweep_dir / 'summary.csv')))
    assert [row['variant'] for row in table] == ['lr=0.1', 'lr=0.2', 'lr=0.3']
    assert float(table[0]['best_val_top1']) == 0.5 and table[0]['epochs_total'] == '3'
    assert table[1]['best_val_top1'] == '' and table[1]['status'] == 'failed (exit 1)'
    markdown = (sweep_dir / 'summary.md').read_text()
    assert markdown.startswith('Sweep of base.yaml with training.epochs=3;')
    assert '| lr=0.1 | 0.1 | finished | 3 | 3 | 2 | 50.00 | 90.00 | 40.00 | 90.00 | 2.0000 |' \
        in markdown
    assert '| lr=0.3 | 0.3 | pending | 0 | - |' in markdown
    assert (sweep_dir / 'val_top1.png').read_bytes()[:8] == PNG
    assert not [path for path in sweep_dir.iterdir() if path.suffix == '.tmp']


def test_the_plot_has_a_line_per_validated_variant_in_percent(sweep_dir):
    names = ['lr=0.1', 'lr=0.2', 'lr=0.3']
    ax = sweep_figure({name: epoch_series(read_log(sweep_dir / name))
                       for name in names}).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines) == ['lr=0.1']
    assert list(lines['lr=0.1'].get_xdata()) == [1, 2, 3]
    assert list(lines['lr=0.1'].get_ydata()) == pytest.approx([30.0, 50.0, 40.0])
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ['lr=0.1']


def test_a_markdown_table_without_title():
    rows = [{'variant': 'a', 'k': '1', **dict.fromkeys(
        [name for name, _, _ in COLUMNS], None), 'status': 'pending'}]
    assert format_markdown(rows, ['k']).splitlines()[0].startswith('| variant | k | status |')


def test_a_running_variant_of_a_killed_sweep_is_interrupted(sweep_dir, betons, capsys):
    manifest = read_manifest(sweep_dir)
    manifest['outcomes']['lr=0.3'] = {'status': 'running'}
    write_manifest(sweep_dir, manifest)
    assert summary_rows(sweep_dir, manifest)[2]['status'] == 'interrupted'
    lock = lock_sweep(sweep_dir)  # as a live sweep holds it
    try:
        assert summary_rows(sweep_dir, manifest)[2]['status'] == 'running'
        # and a second sweep in the same folder is refused
        assert sweep.run(_sweep_args(betons, sweep_dir, '--grid', 'lr.lr=0.1,0.2')) == 2
        assert capsys.readouterr().err.strip() == \
            f'error: {sweep_dir} is in use by another sweep'
    finally:
        lock.close()


def test_summarise_only_needs_a_sweep_folder(tmp_path, capsys):
    assert sweep.run(['--summarise-only', str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == \
        f'error: no sweep.json in {tmp_path}: not a sweep folder'
    with pytest.raises(FileNotFoundError):
        summarise(tmp_path)


# --- a real sweep, stopped and continued -------------------------------------------

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
    argv = _sweep_args(betons, out, '--grid', 'model.drop_path_rate=0,0.1')
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
