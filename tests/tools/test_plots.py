"""The plots command (tools/plots.py): the written paths printed, one-line errors."""
import subprocess
import sys

import pytest

from ffcv_imagenet.tools.plots import main
from ffcv_imagenet.training.logs import RunLog
from ffcv_imagenet.training.plots import PLOTS, plot_run
from tests.support import ROOT, assert_plot_pngs, write_run_log


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    return write_run_log(tmp_path_factory.mktemp('run'))


def test_main_prints_the_written_paths(run_dir, tmp_path, capsys):
    assert main([str(run_dir), '--out', str(tmp_path / 'out')]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / 'out' / f'{name}.png') for name in PLOTS]
    assert_plot_pngs(printed, tmp_path / 'out')


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
