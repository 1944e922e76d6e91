"""The bench command (tools/bench/command.py): a missing .beton is refused."""
import pytest

from ffcv_imagenet.tools.bench import command


def test_train_benchmark_rejects_a_missing_beton(capsys):
    with pytest.raises(SystemExit) as exit_info:
        command.main(['train', '--beton', 'missing.beton', '--arch', 'resnet18',
                    '--device', 'cpu', '--precision', 'off'])
    assert exit_info.value.code == 2
    assert 'missing.beton' in capsys.readouterr().err
