import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.image import imread

from ffcv_imagenet.training import plots
from ffcv_imagenet.training.logs import RunLog, read_log
from ffcv_imagenet.tools.plots import main
from ffcv_imagenet.training.plots import PLOTS, epoch_series, make_figure, plot_run

ROOT = Path(__file__).resolve().parents[1]


def _epoch(epoch, val=True, **extra):
    record = {'epoch': epoch, 'iteration': 10 * epoch, 'lr': 0.1 / epoch,
              'resolution': 96 + 16 * epoch, 'train_loss': 3.0 / epoch,
              'train_top1': 0.1 * epoch, 'val_loss': None, 'val_top1': None,
              'val_top5': None, 'images_per_sec': 180.0, 'epoch_time': 16.2}
    if val:
        record.update(val_loss=2.5 / epoch, val_top1=0.12 * epoch, val_top5=0.2 * epoch)
    record.update(extra)
    return record


def _write_run(run_dir, mixing=False):
    """A resumed run's log: epoch 2 logged twice, no validation on epoch 1 or 3,
    EMA validation from epoch 2, and a torn last line (the run is still writing)."""
    log = RunLog(run_dir, enabled=True, echo=False)
    label = {'train_top1_label': 'dominant label'} if mixing else {}
    log.event('start', epochs=5)
    log.event('epoch', **_epoch(1, val=False, **label))
    log.event('epoch', **_epoch(2, train_loss=9.0, **label))  # crashed before checkpoint
    log.event('resume', epoch=1)
    log.event('epoch', **_epoch(2, ema_val_loss=2.0, ema_val_top1=0.3, ema_val_top5=0.5,
                                **label))
    log.event('epoch', **_epoch(3, val=False, **label))
    log.event('epoch', **_epoch(4, ema_val_loss=1.0, ema_val_top1=0.5, ema_val_top5=0.8,
                                **label))
    with open(run_dir / 'log.jsonl', 'a') as handle:
        handle.write('{"event": "epoch", "epoch": 5, "train_lo')
    return run_dir


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    return _write_run(tmp_path_factory.mktemp('run'))


def _assert_pngs(paths, folder):
    assert [Path(p) for p in paths] == [Path(folder) / f'{name}.png' for name in PLOTS]
    for path in paths:
        assert Path(path).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
        pixels = imread(path)
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    # only the finished PNGs: no temporary files left behind
    assert sorted(p.name for p in Path(folder).iterdir()) == sorted(f'{n}.png' for n in PLOTS)


def test_epoch_series_keeps_the_last_record_per_epoch_sorted(run_dir):
    series = epoch_series(read_log(run_dir))
    assert series['epoch'] == [1, 2, 3, 4]
    assert series['train_loss'] == [3.0, 1.5, 1.0, 0.75]  # the re-logged epoch 2 wins
    assert series['val_top1'] == [None, 0.24, None, 0.48]
    assert series['ema_val_top1'] == [None, 0.3, None, 0.5]
    assert series['resolution'] == [112, 128, 144, 160]
    assert all(len(column) == 4 for column in series.values())
    assert 'event' not in series


def test_epoch_series_has_every_plotted_key_even_when_no_record_has_it():
    series = epoch_series([{'event': 'start'}, {'event': 'epoch', 'epoch': 1, 'lr': 0.1}])
    assert series['epoch'] == [1] and series['lr'] == [0.1]
    assert series['ema_val_top5'] == [None] and series['val_loss'] == [None]
    assert epoch_series([{'event': 'start'}])['epoch'] == []


def test_plot_run_writes_four_pngs_atomically(run_dir):
    paths = plot_run(run_dir)
    _assert_pngs(paths, run_dir / 'plots')


def test_plot_run_writes_into_out_dir(run_dir, tmp_path):
    paths = plot_run(run_dir, tmp_path / 'elsewhere')
    _assert_pngs(paths, tmp_path / 'elsewhere')


def test_a_png_appears_whole_by_rename_and_a_failed_save_leaves_nothing(run_dir, tmp_path,
                                                                      monkeypatch):
    renamed, real_replace = [], plots.os.replace

    def checking_replace(source, target):
        # the temporary file is a finished PNG in the target's folder (same filesystem)
        assert Path(source).parent == Path(target).parent and Path(source) != Path(target)
        assert Path(source).read_bytes()[:4] == b'\x89PNG' and not Path(target).exists()
        renamed.append(Path(target).name)
        real_replace(source, target)

    monkeypatch.setattr(plots.os, 'replace', checking_replace)
    plot_run(run_dir, tmp_path / 'ok')
    assert renamed == [f'{name}.png' for name in PLOTS]

    def failing_savefig(fig, path, **kwargs):
        Path(path).write_bytes(b'\x89PNG half')
        raise OSError('disk full')

    monkeypatch.setattr(plots.Figure, 'savefig', failing_savefig)
    with pytest.raises(OSError, match='disk full'):
        plot_run(run_dir, tmp_path / 'full')
    assert list((tmp_path / 'full').iterdir()) == []


def test_figures_skip_missing_points_and_show_accuracy_in_percent(run_dir):
    series = epoch_series(read_log(run_dir))
    accuracy = make_figure('accuracy', series).axes[0]
    lines = {line.get_label(): line for line in accuracy.get_lines()}
    assert list(lines) == ['train top-1', 'val top-1', 'val top-5', 'EMA val top-1',
                           'EMA val top-5']
    assert list(lines['val top-1'].get_xdata()) == [2, 4]  # no validation on 1 and 3
    assert list(lines['val top-1'].get_ydata()) == pytest.approx([24.0, 48.0])
    assert accuracy.get_ylim() == (0, 100)
    assert '%' in accuracy.get_ylabel()
    loss = make_figure('loss', series).axes[0]
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ['train', 'val', 'EMA val']
    assert make_figure('resolution', series).axes[0].get_ylabel() == 'resolution (pixels)'


def test_a_mixing_run_says_what_train_top1_is_measured_against(tmp_path):
    run = _write_run(tmp_path / 'mix', mixing=True)
    series = epoch_series(read_log(run))
    legend = make_figure('accuracy', series).axes[0].get_legend()
    assert legend.get_texts()[0].get_text() == 'train top-1 (vs dominant label)'
    _assert_pngs(plot_run(run), run / 'plots')


def test_main_prints_the_written_paths(run_dir, tmp_path, capsys):
    assert main([str(run_dir), '--out', str(tmp_path / 'out')]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / 'out' / f'{name}.png') for name in PLOTS]
    _assert_pngs(printed, tmp_path / 'out')


def test_main_reports_a_missing_log(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith('error: ') and 'log.jsonl' in error
    assert not (tmp_path / 'plots').exists()
    with pytest.raises(FileNotFoundError, match='no log.jsonl in'):
        plot_run(tmp_path)


def test_main_reports_a_log_without_epochs(tmp_path, capsys):
    RunLog(tmp_path, echo=False).event('start', epochs=5)
    assert main([str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith('error: ') and 'no epoch records' in error
    with pytest.raises(ValueError, match='no epoch records'):
        plot_run(tmp_path)


def test_python_dash_m_entry_point(run_dir, tmp_path):
    done = subprocess.run([sys.executable, '-m', 'ffcv_imagenet', 'plots', str(run_dir),
                           '--out', str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(tmp_path / f'{name}.png') for name in PLOTS]
    missing = subprocess.run([sys.executable, '-m', 'ffcv_imagenet', 'plots',
                              str(tmp_path / 'no')],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and 'error: no log.jsonl' in missing.stderr
