"""The bench command (tools/bench/command.py): a missing .beton, or more decoding
threads than numba starts, is refused in one line."""
import numba
import pytest

from ffcv_imagenet.tools.bench import command


def test_train_benchmark_rejects_a_missing_beton(capsys):
    with pytest.raises(SystemExit) as exit_info:
        command.main(['train', '--beton', 'missing.beton', '--arch', 'resnet18',
                    '--device', 'cpu', '--precision', 'off'])
    assert exit_info.value.code == 2
    assert 'missing.beton' in capsys.readouterr().err


REQUIRED = {'loader': ['--folder', 'missing']}  # beside --beton


@pytest.mark.parametrize('bench', ['train', 'loader', 'order', 'memory'])
def test_more_decoding_threads_than_numba_starts_are_refused_in_one_line(bench, capsys):
    too_many = numba.config.NUMBA_NUM_THREADS + 1
    with pytest.raises(SystemExit) as exit_info:
        command.main([bench, '--beton', 'missing.beton', *REQUIRED.get(bench, []),
                      '--workers', str(too_many)])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f'--workers: {too_many} decoding threads asked for, but numba starts at most' in last


def test_the_converters_workers_are_processes_not_numba_threads(capsys):
    with pytest.raises(SystemExit):
        command.main(['convert', '--workers', str(numba.config.NUMBA_NUM_THREADS + 1),
                      '--images', '0'])
    assert 'numba' not in capsys.readouterr().err
