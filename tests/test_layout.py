"""The package layout tells the data flow, and its rules hold in every sub-package: the
library below the config edge (data/, training/) never reads config nor imports the
tools, the config edge (cli/) never imports the tools, the write and read sides of data/
never import each other; the public API resolves, the front door runs every command,
and the README, the Makefile and docs/*.md name only commands, modules and files that
exist."""
import ast
import importlib
import inspect
import re
import subprocess
import sys

import pytest

import ffcv_imagenet
from ffcv_imagenet.__main__ import COMMANDS, main as front_door
from tests.support import ROOT

PACKAGE = ROOT / 'ffcv_imagenet'
LIBRARY = ('data', 'training')  # below the config edge
CONFIG_MODULES = ('fastargs', 'ffcv_imagenet.cli')
# a sub-package (and everything below it) -> the names it must never import
LAYERS = {
    'data': CONFIG_MODULES + ('ffcv_imagenet.tools',),
    'training': CONFIG_MODULES + ('ffcv_imagenet.tools',),
    'cli': ('ffcv_imagenet.tools',),
    'data/write': ('ffcv_imagenet.data.read',),
    'data/read': ('ffcv_imagenet.data.write',),
}


def _module_name(path, root=ROOT):
    """``ffcv_imagenet/data/read/loaders.py`` -> ``ffcv_imagenet.data.read.loaders`` (a
    package's ``__init__.py`` -> the package)."""
    parts = list(path.relative_to(root).with_suffix('').parts)
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _modules(sub):
    """Every module under ``ffcv_imagenet/<sub>``, sub-packages included (not the
    packages' ``__init__``)."""
    return sorted(_module_name(path) for path in (PACKAGE / sub).rglob('*.py')
                  if path.stem != '__init__')


def _under(name, prefixes):
    return any(name == prefix or name.startswith(prefix + '.') for prefix in prefixes)


def _imported_names(path, root=ROOT):
    """Absolute names of everything ``path`` imports, relative imports resolved against
    its package however deep it lies (``from ..folders import x`` in
    ``data/read/loaders.py`` is ``ffcv_imagenet.data.folders``)."""
    package = list(path.relative_to(root).parent.parts)
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
    assert {p.name for p in PACKAGE.iterdir()
            if p.is_dir() and p.name != '__pycache__'} == {'data', 'training', 'cli', 'tools'}


@pytest.mark.parametrize('sub', LIBRARY)
def test_library_modules_do_not_import_the_config_system(sub):
    """Every module below data/ and training/, in sub-packages too."""
    paths = sorted((PACKAGE / sub).rglob('*.py'))
    assert paths
    for path in paths:
        for name in _imported_names(path):
            assert not name.startswith(CONFIG_MODULES), f"{path.relative_to(ROOT)} imports {name}"
            assert not name.startswith('ffcv_imagenet.tools'), \
                f"{path.relative_to(ROOT)} imports {name}"


@pytest.mark.parametrize('sub', LAYERS)
def test_each_layer_imports_nothing_it_must_not(sub):
    """data/ and training/: no config and no tools; cli/: no tools; data/write and
    data/read: not each other. Every module below the folder, sub-packages too."""
    paths = sorted((PACKAGE / sub).rglob('*.py'))
    assert paths
    for path in paths:
        for name in _imported_names(path):
            assert not _under(name, LAYERS[sub]), f"{path.relative_to(ROOT)} imports {name}"


def test_relative_imports_resolve_against_the_nested_package(tmp_path):
    module = tmp_path / 'ffcv_imagenet' / 'data' / 'read' / 'example.py'
    module.parent.mkdir(parents=True)
    module.write_text('from . import decoders\nfrom .beton import check_beton\n'
                      'from ..folders import DatasetError\nfrom ... import training\n'
                      'from ..write.writer import write_beton\nimport numpy\n')
    assert _imported_names(module, root=tmp_path) == [
        'ffcv_imagenet.data.read', 'ffcv_imagenet.data.read.decoders',
        'ffcv_imagenet.data.read.beton', 'ffcv_imagenet.data.read.beton.check_beton',
        'ffcv_imagenet.data.folders', 'ffcv_imagenet.data.folders.DatasetError',
        'ffcv_imagenet', 'ffcv_imagenet.training',
        'ffcv_imagenet.data.write.writer', 'ffcv_imagenet.data.write.writer.write_beton',
        'numpy']
    assert _module_name(module, root=tmp_path) == 'ffcv_imagenet.data.read.example'
    assert _module_name(module.parent / '__init__.py', root=tmp_path) == \
        'ffcv_imagenet.data.read'


def test_importing_the_library_loads_no_config_module():
    """Transitively, too: a fresh interpreter imports every data and training module
    (the loop and the loaders among them) and finds neither fastargs nor the config
    edge loaded."""
    modules = _modules('data') + _modules('training')
    assert 'ffcv_imagenet.training.loop' in modules
    assert 'ffcv_imagenet.data.read.loaders' in modules
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


def _documents():
    """README.md, the Makefile and whatever docs/*.md there is (none is fine)."""
    return [ROOT / 'README.md', ROOT / 'Makefile', *sorted((ROOT / 'docs').glob('*.md'))]


_MISSING = object()


def _named_but_missing(text):
    """The commands (``-m ffcv_imagenet NAME``), dotted modules or attributes
    (``ffcv_imagenet.x.y``) and module files (``ffcv_imagenet/x/y.py``, ``tests/x/y.py``)
    that ``text`` names and that do not exist."""
    missing = sorted(f'command {name}' for name in
                     set(re.findall(r'-m ffcv_imagenet ([a-z_-]+)', text)) - set(COMMANDS))
    for dotted in sorted(set(re.findall(r'ffcv_imagenet(?:\.[a-z_]+)+', text))):
        parts = dotted.split('.')
        for cut in range(len(parts), 0, -1):  # a module, or an attribute of one
            try:
                module = importlib.import_module('.'.join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            for attribute in parts[cut:]:
                module = getattr(module, attribute, _MISSING)
            if module is _MISSING:
                missing.append(dotted)
            break
        else:
            missing.append(dotted)
    paths = set(re.findall(r'(?<![\w/.])(?:ffcv_imagenet|tests)/[\w/]*\.py\b', text))
    missing += sorted(path for path in paths if not (ROOT / path).is_file())
    return missing


def test_the_readme_makefile_and_docs_name_only_what_exists():
    text = '\n'.join(path.read_text() for path in _documents())
    commands = set(re.findall(r'-m ffcv_imagenet ([a-z_-]+)', text))
    assert commands and commands <= set(COMMANDS), commands - set(COMMANDS)
    assert '-m ffcv_imagenet.' not in text  # old module paths
    assert _named_but_missing(text) == [], 'README/Makefile/docs name what does not exist'


def test_the_name_check_reads_every_doc_and_needs_none(tmp_path, monkeypatch):
    """The check above finds what a doc names wrongly, and takes docs/ with no files."""
    assert _named_but_missing('-m ffcv_imagenet train, ffcv_imagenet.data.read.loaders.'
                              'train_loader, ffcv_imagenet/data/read/loaders.py, '
                              'tests/data/read/test_loaders.py, tests/test_<module>.py') == []
    assert _named_but_missing('-m ffcv_imagenet trian; ffcv_imagenet.data.loaders; '
                              'ffcv_imagenet.data.read.loaders.no_loader; '
                              'ffcv_imagenet/data/loaders.py; tests/test_loaders.py') == [
        'command trian', 'ffcv_imagenet.data.loaders',
        'ffcv_imagenet.data.read.loaders.no_loader', 'ffcv_imagenet/data/loaders.py',
        'tests/test_loaders.py']
    monkeypatch.setattr(sys.modules[__name__], 'ROOT', tmp_path)
    (tmp_path / 'docs').mkdir()
    assert _documents() == [tmp_path / 'README.md', tmp_path / 'Makefile']
    (tmp_path / 'docs' / 'b.md').write_text('')
    (tmp_path / 'docs' / 'a.md').write_text('')
    assert _documents()[2:] == [tmp_path / 'docs' / 'a.md', tmp_path / 'docs' / 'b.md']


def _api_example():
    """(document, code) of the example of the package root's names, in README.md or
    docs/*.md: the python block that generates data, converts it, loads a batch and
    runs a model on it."""
    for path in _documents():
        for block in re.findall(r'```python\n(.*?)```', path.read_text(), re.S):
            if 'generate_synthetic(' in block and 'logits = model(images)' in block:
                return path, block
    pytest.fail('README.md and docs/*.md hold no example of the package root '
                '(generate_synthetic ... logits = model(images))')


@pytest.mark.slow
def test_the_python_api_example_runs(tmp_path, monkeypatch):
    path, example = _api_example()
    # fewer images, and one decoding thread, whose serial loop numba compiles faster
    example = example.replace('train_per_class=100', 'train_per_class=7').replace(
        'num_workers=2', 'num_workers=1')
    monkeypatch.chdir(tmp_path)
    names = {}
    exec(compile(example, str(path.relative_to(ROOT)), 'exec'), names)
    assert tuple(names['images'].shape) == (64, 3, 160, 160)
    assert tuple(names['logits'].shape) == (64, 10)
