"""The sweep folder (tools/sweep_summary.py): its manifest, each run's metrics from
hand-written logs, the summary tables and plot, and a variant of a killed sweep."""
import csv
import json

import pytest

from ffcv_imagenet.tools import sweep
from ffcv_imagenet.tools.sweep_summary import (COLUMNS, format_markdown, lock_sweep,
                                               read_manifest, run_metrics, summarise,
                                               summary_rows, sweep_figure, wall_seconds,
                                               write_manifest)
from ffcv_imagenet.training.logs import read_log
from ffcv_imagenet.training.plots import epoch_series
from tests.support import sweep_args


PNG = b'\x89PNG\r\n\x1a\n'


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
        assert sweep.run(sweep_args(betons, sweep_dir, '--grid', 'lr.lr=0.1,0.2')) == 2
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
