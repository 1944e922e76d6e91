"""The learning-rate range test: its pieces on known curves, and the command on the
synthetic data."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from ffcv_imagenet.cli.config import ConfigError
from ffcv_imagenet.tools.lr_finder import lr_at_step, main, smooth, suggest_lr
from tests.support import ROOT, tiny_args


def test_the_ramp_is_exponential_from_start_to_end():
    rates = [lr_at_step(i, 5, 1e-4, 1.0) for i in range(5)]
    assert rates == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])


def test_smoothing_is_bias_corrected():
    assert smooth([2.0] * 5, beta=0.9) == pytest.approx([2.0] * 5)  # no pull towards 0
    assert smooth([1.0, 3.0], beta=0.5) == pytest.approx([1.0, (0.5 * 0.5 + 0.5 * 3.0) / (1 - 0.5 ** 2)])


def test_suggestion_is_the_steepest_descent_before_the_minimum():
    lrs = np.logspace(-4, 1, 101)
    x = np.log10(lrs)
    # a fall centred at lr 10^-2, a minimum near 10^-0.5, then a blow-up
    losses = 2 - np.tanh(2 * (x + 2)) + np.where(x > -0.5, 30 * (x + 0.5) ** 2, 0)
    lr, index, rule = suggest_lr(list(lrs), list(losses))
    assert lr == pytest.approx(1e-2, rel=0.15)
    assert 'steepest descent' in rule and lrs[index] == lr


def test_no_suggestion_when_the_loss_never_falls():
    lrs = list(np.logspace(-3, 0, 10))
    with pytest.raises(ValueError, match='never fell'):
        suggest_lr(lrs, [1.0 + i for i in range(10)])


def _finder_args(betons, folder, *extra):
    return [*tiny_args(betons, folder), '--lr_finder.steps=30', '--lr_finder.start_lr=1e-3',
            '--lr_finder.end_lr=5', *extra]


def test_finder_writes_curve_png_and_a_finite_suggestion(betons, tmp_path, capsys):
    folder = tmp_path / 'run'
    existing = folder / 'checkpoints' / 'last.pt'
    existing.parent.mkdir(parents=True)
    existing.write_bytes(b'an earlier run')
    assert main(_finder_args(betons, folder)) == 0
    out = folder / 'lr_finder'
    curve = json.loads((out / 'lr_finder.json').read_text())
    assert 3 <= len(curve['lr']) == len(curve['loss']) == len(curve['smoothed']) <= 30
    assert all(a < b for a, b in zip(curve['lr'], curve['lr'][1:]))
    assert math.isfinite(curve['suggested_lr']) and 1e-3 <= curve['suggested_lr'] <= 5
    # the printed lr.lr converts to the recipe's per-256-images convention (batch 8)
    assert curve['suggested_lr_per_reference_batch'] == pytest.approx(
        curve['suggested_lr'] * 256 / 8)
    assert (out / 'lr_finder.png').read_bytes()[:4] == b'\x89PNG'
    printed = capsys.readouterr().out
    assert f"suggested lr {curve['suggested_lr']:.4g}" in printed and 'rule:' in printed
    assert existing.read_bytes() == b'an earlier run'  # no checkpoint touched or added
    assert sorted(p.name for p in existing.parent.iterdir()) == ['last.pt']


def test_a_test_that_blows_up_at_once_reports_no_suggestion(betons, tmp_path, capsys):
    folder = tmp_path / 'run'
    assert main(_finder_args(betons, folder, '--lr_finder.start_lr=1e6',
                             '--lr_finder.end_lr=1e7')) == 1
    curve = json.loads((folder / 'lr_finder' / 'lr_finder.json').read_text())
    assert curve['suggested_lr'] is None and curve['stopped'] in ('diverged', 'non-finite')
    assert 'no suggestion' in capsys.readouterr().out


@pytest.mark.parametrize('extra, key', [(['--lr_finder.end_lr=1e-5'], 'lr_finder.start_lr'),
                                        (['--lr_finder.steps=2'], 'lr_finder.steps'),
                                        (['--lr_finder.stpes=2'], 'lr_finder.stpes')])
def test_bad_settings_name_the_key(betons, tmp_path, extra, key):
    with pytest.raises(ConfigError, match=key):
        main(_finder_args(betons, tmp_path / 'run', *extra))


def test_python_dash_m_reports_errors_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, '-m', 'ffcv_imagenet', 'lr-finder',
                           '--data.train_dataset=/nowhere/train.beton',
                           '--data.val_dataset=/nowhere/val.beton',
                           f'--logging.folder={tmp_path}', '--training.device=cpu'],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == \
        'error: data.train_dataset: .beton file not found: /nowhere/train.beton'
