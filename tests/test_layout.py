"""The package layout tells the data flow, and its rules hold: the library below the
config edge never reads config, the public API resolves, the front door runs every
command, and the README and Makefile name only commands and modules that exist."""
import ast
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ffcv_imagenet
from ffcv_imagenet.__main__ import COMMANDS, main as front_door

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'ffcv_imagenet'
LIBRARY = ('data', 'training')  # below the config edge
CONFIG_MODULES = ('fastargs', 'ffcv_imagenet.cli')


def _modules(sub):
    return sorted(f'ffcv_imagenet.{sub}.{path.stem}' for path in (PACKAGE / sub).glob('*.py')
                  if path.stem != '__init__')


def _imported_names(path):
    """Absolute names of everything ``path`` imports (relative imports resolved)."""
    package = ['ffcv_imagenet', path.parent.name]
    names = []
    try:
        tree = ast.parse(path.read_text())
    except SystemError:  # CPython 3.11.7's spurious 'recursion depth mismatch': retry
        tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = '.'.join(base + ([node.module] if node.module else []))
            names += [module] + [f'{module}.{alias.name}' for alias in node.names]
    return names


def test_the_package_root_holds_only_the_api_and_the_front_door():
    assert sorted(p.name for p in PACKAGE.glob('*.py')) == ['__init__.py', '__main__.py']
    assert {p.name for p in PACKAGE.iterdir() if (p / '__init__.py').is_file()} == {
        'data', 'training', 'cli', 'tools'}


@pytest.mark.parametrize('sub', LIBRARY)
def test_library_modules_do_not_import_the_config_system(sub):
    for path in (PACKAGE / sub).glob('*.py'):
        for name in _imported_names(path):
            assert not name.startswith(CONFIG_MODULES), f"{path.name} imports {name}"
            assert not name.startswith('ffcv_imagenet.tools'), f"{path.name} imports {name}"


def test_importing_the_library_loads_no_config_module():
    """Transitively, too: a fresh interpreter imports every data and training module
    (the loop among them) and finds neither fastargs nor the config edge loaded."""
    modules = _modules('data') + _modules('training')
    assert 'ffcv_imagenet.training.loop' in modules
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted(m for m in sys.modules if m.startswith({CONFIG_MODULES!r})))")
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '[]'


def test_fit_takes_a_run_and_a_log():
    from ffcv_imagenet.training.loop import Run, fit
    assert list(inspect.signature(fit).parameters) == ['run', 'log']
    assert 'model' in Run.__dataclass_fields__ and 'train_loader' in Run.__dataclass_fields__


def test_the_public_api_resolves_to_the_library():
    from ffcv_imagenet.data.read.loaders import train_loader
    from ffcv_imagenet.data.write.writer import write_beton
    from ffcv_imagenet.training.models import build_model
    assert ffcv_imagenet.train_loader is train_loader
    assert ffcv_imagenet.write_beton is write_beton
    assert ffcv_imagenet.build_model is build_model
    for name in ffcv_imagenet.__all__:
        assert getattr(ffcv_imagenet, name) is not None, name
        assert name in dir(ffcv_imagenet)
    with pytest.raises(AttributeError, match='no attribute'):
        ffcv_imagenet.not_a_name


def test_importing_the_package_is_cheap():
    done = subprocess.run([sys.executable, '-c', 'import sys, ffcv_imagenet; '
                           'print(sorted({"torch", "ffcv", "numba"} & set(sys.modules)))'],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.stdout.strip() == '[]', done.stderr


def test_the_front_door_lists_its_commands(capsys):
    assert front_door([]) == 2
    listed = capsys.readouterr().out
    for name in COMMANDS:
        assert f'  {name} ' in listed
    assert front_door(['no-such-command']) == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err


@pytest.mark.parametrize('name', list(COMMANDS))
def test_every_command_runs_through_the_front_door(name, capsys):
    module, function, _ = COMMANDS[name]
    assert callable(getattr(importlib.import_module(module), function))
    with pytest.raises(SystemExit) as done:
        front_door([name, '--help'])
    assert done.value.code == 0
    assert f'python -m ffcv_imagenet {name}' in capsys.readouterr().out


def test_readme_and_makefile_name_only_what_exists():
    text = (ROOT / 'README.md').read_text() + (ROOT / 'Makefile').read_text()
    commands = set(re.findall(r'-m ffcv_imagenet ([a-z_-]+)', text))
    assert commands and commands <= set(COMMANDS), commands - set(COMMANDS)
    assert '-m ffcv_imagenet.' not in text  # old module paths
    for dotted in set(re.findall(r'ffcv_imagenet(?:\.[a-z_]+)+', text)):
        parts = dotted.split('.')
        for cut in range(len(parts), 0, -1):  # a module, or an attribute of one
            try:
                module = importlib.import_module('.'.join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            for attribute in parts[cut:]:
                module = getattr(module, attribute)
            break
        else:
            pytest.fail(f'README/Makefile name {dotted}, which does not exist')


@pytest.mark.slow
def test_the_readme_notebook_example_runs(tmp_path, monkeypatch):
    readme = (ROOT / 'README.md').read_text()
    example = readme.split('In a notebook, the package root')[1].split('```python')[1]
    example = example.split('```')[0].replace('train_per_class=100', 'train_per_class=7')
    monkeypatch.chdir(tmp_path)
    names = {}
    exec(compile(example, 'README.md', 'exec'), names)
    assert tuple(names['images'].shape) == (64, 3, 160, 160)
    assert tuple(names['logits'].shape) == (64, 10)
