"""gpu-check: one line and exit code 3 without CUDA; every stage at toy size on the CPU
(so the command cannot rot between GPU runs)."""
import json
import subprocess
import sys

import pytest
import torch

from ffcv_imagenet.tools import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA')
def test_without_cuda_it_says_so_in_one_line(tmp_path, capsys):
    assert gpu_check.main(['--out', str(tmp_path / 'out')]) == gpu_check.NO_CUDA == 3
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and 'no CUDA device' in err and '--device cpu' in err
    assert not (tmp_path / 'out').exists()


def test_a_failed_stage_fails_the_check_and_the_others_still_run(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, 'make_storages',
                        lambda out, profile, workers: {name: ('a', 'b')
                                                       for name in profile.storages})
    monkeypatch.setattr(gpu_check, 'check_crops', lambda *a: {'ok': False, 'summary': 'bad'})

    def broken(*args):
        raise RuntimeError('out of memory')
    monkeypatch.setattr(gpu_check, 'check_training', broken)
    monkeypatch.setattr(gpu_check, 'measure_speed', lambda *a: [])
    monkeypatch.setattr(gpu_check, 'loader_scaling', lambda *a: [])
    code = gpu_check.main(['--device', 'cpu', '--out', str(tmp_path), '--skip', 'cuda-tests'])
    assert code == 1
    report = json.loads((tmp_path / 'gpu_check.json').read_text())
    verdicts = {s['stage']: s['ok'] for s in report['stages']}
    assert verdicts == {'environment': True, 'cuda-tests': None, 'crops': False,
                        'training': False, 'speed': True, 'loader-threads': True}
    assert 'RuntimeError: out of memory' in (tmp_path / 'gpu_check.md').read_text()


CUDA_TESTS = '''import pytest, torch

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_on_the_gpu():
    assert torch.cuda.is_available()

def test_not_marked():
    raise AssertionError('gpu-check runs only the tests marked cuda')
'''


@pytest.mark.slow
def test_every_stage_runs_at_toy_size_on_the_cpu(tmp_path):
    # the cuda-tests stage on a folder of two tests: on the project's own folder it would
    # collect the whole suite (tens of seconds here) to find nothing it can run
    tests = tmp_path / 'tests'
    tests.mkdir()
    (tests / 'test_marked.py').write_text(CUDA_TESTS)
    done = subprocess.run([sys.executable, '-m', 'ffcv_imagenet', 'gpu-check', '--device',
                           'cpu', '--out', str(tmp_path), '--tests', str(tests)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / 'gpu_check.json').read_text())
    stages = {s['stage']: s for s in report['stages']}
    assert list(stages) == ['environment', 'cuda-tests', 'crops', 'training', 'speed',
                            'loader-threads']
    assert stages['cuda-tests']['ok'] is True  # pytest -m cuda ran: all skipped here
    assert '1 skipped, 1 deselected' in stages['cuda-tests']['summary']
    assert stages['crops']['max_pixel_difference'] < 0.01
    assert list(stages['training']['runs']) == ['bf16 under torchrun']
    for run in stages['training']['runs'].values():
        assert run['train_loss'][-1] < run['train_loss'][0]
    rows = stages['speed']['rows']
    # the published storage first, eager then compiled; then 256 px JPEG
    assert [(r['storage'], r['resolution'], r['compiled']) for r in rows] == [
        ('rn50-published', 32, False), ('rn50-published', 32, True), ('fast-256', 32, False)]
    assert all(r['loader_alone'] > 0 and r['model_alone'] > 0 and r['end_to_end'] > 0
               for r in rows)
    scaling = stages['loader-threads']['rows']
    assert [(r['storage'], r['dct_scaling'], r['threads']) for r in scaling] == [
        ('rn50-published', False, 2), ('rn50-published', True, 2), ('fast-256', False, 2)]
    assert all(r['images_per_sec'] > 0 for r in scaling)
    table = (tmp_path / 'gpu_check.md').read_text()
    assert table.startswith('# gpu-check on CPU')
    assert '| rn50-published | 32 | no | off |' in table and '| fast-256 | full-size | 2 |' in table
    # the data in both storages, each recorded as its preset
    for name in ('rn50-published', 'fast-256'):
        record = json.loads((tmp_path / 'data' / name / 'train.beton.storage.json').read_text())
        assert record['preset'] == name
