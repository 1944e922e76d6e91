"""The config edge's command line and files (cli/config.py): a recipe named without a
folder is found among the shipped ones from any folder, a file in the current folder
wins, and an unknown name lists the shipped ones."""
import pytest

from ffcv_imagenet.cli.config import ConfigError, parse_config
from ffcv_imagenet.cli.train_config import SECTIONS
from tests.support import RECIPES


def test_a_bare_recipe_name_is_found_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    by_name = parse_config('test', ['--config', 'rn50_88_epochs.yaml'], SECTIONS)
    by_path = parse_config('test', ['-C', str(RECIPES[0].parent / 'rn50_88_epochs.yaml')],
                           SECTIONS)
    assert by_name['training.epochs'] == by_path['training.epochs'] == 88
    assert by_name['lr.lr'] == by_path['lr.lr']
    without_suffix = parse_config('test', ['--config', 'rn18_16_epochs'], SECTIONS)
    assert without_suffix['training.epochs'] == 16
    assert without_suffix['model.arch'] == 'resnet18'


def test_a_file_in_the_current_folder_wins_over_the_shipped_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = (RECIPES[0].parent / 'rn50_88_epochs.yaml').read_text()
    (tmp_path / 'rn50_88_epochs.yaml').write_text(shipped.replace('epochs: 88', 'epochs: 3'))
    assert parse_config('test', ['--config', 'rn50_88_epochs.yaml'],
                        SECTIONS)['training.epochs'] == 3


def test_an_unknown_recipe_name_lists_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        parse_config('test', ['--config', 'rn50_99_epochs.yaml'], SECTIONS)
    message = str(caught.value)
    assert message.startswith('config file not found: rn50_99_epochs.yaml')
    assert 'rn50_88_epochs.yaml' in message and 'rn18_cpu_demo.yaml' in message
    assert '\n' not in message
    with pytest.raises(ConfigError, match=r'^config file not found: sub/rn50_88_epochs\.yaml$'):
        parse_config('test', ['--config', 'sub/rn50_88_epochs.yaml'], SECTIONS)
