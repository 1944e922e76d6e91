"""PNG plots of a run's log (training/plots.py): the last record of each epoch, every
plotted key, missing points skipped, accuracy in percent, each PNG written whole by
rename."""
from pathlib import Path

import pytest

from ffcv_imagenet.training import plots
from ffcv_imagenet.training.logs import read_log
from ffcv_imagenet.training.plots import PLOTS, epoch_series, make_figure, plot_run
from tests.support import assert_plot_pngs, write_run_log


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    return write_run_log(tmp_path_factory.mktemp('run'))


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
    assert_plot_pngs(paths, run_dir / 'plots')


def test_plot_run_writes_into_out_dir(run_dir, tmp_path):
    paths = plot_run(run_dir, tmp_path / 'elsewhere')
    assert_plot_pngs(paths, tmp_path / 'elsewhere')


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
    run = write_run_log(tmp_path / 'mix', mixing=True)
    series = epoch_series(read_log(run))
    legend = make_figure('accuracy', series).axes[0].get_legend()
    assert legend.get_texts()[0].get_text() == 'train top-1 (vs dominant label)'
    assert_plot_pngs(plot_run(run), run / 'plots')
