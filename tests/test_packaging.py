"""The set-up files agree with each other and with the README, every module of the
package imports, the wheel holds the whole package tree and the recipes, and CI's second
environment (a GPU image's versions) runs tests that import every module of data/ and
training/."""
import ast
import os
import re
import shutil
import site
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT

PACKAGE = ROOT / 'ffcv_imagenet'


def _pins(lines):
    return dict(re.match(r'^\s*([A-Za-z0-9_.-]+)==(\S+)\s*$', line).groups()
                for line in lines if '==' in line and not line.lstrip().startswith('#'))


REQUIREMENTS = _pins((ROOT / 'requirements.txt').read_text().splitlines())
GPU_IMAGE = _pins((ROOT / '.ci' / 'gpu-image.txt').read_text().splitlines())


def test_environment_yml_installs_the_one_pin_file():
    env = yaml.safe_load((ROOT / 'environment.yml').read_text())
    pip_section = next(d['pip'] for d in env['dependencies'] if isinstance(d, dict))
    assert '-r requirements.txt' in pip_section
    assert not _pins(pip_section)  # no second copy of the pins to drift
    for package in ('torch', 'torchvision', 'ffcv', 'numba', 'numpy', 'fastargs', 'tqdm',
                    'pytest'):
        assert package in REQUIREMENTS


def test_no_pin_file_asks_for_opencv_python():
    for pins in (REQUIREMENTS, GPU_IMAGE):
        assert 'opencv-python' not in pins and 'opencv-python-headless' in pins
    dependencies = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
    assert not [d for d in dependencies['dependencies'] if d.startswith('opencv')]


@pytest.mark.parametrize('pins', [REQUIREMENTS, GPU_IMAGE], ids=['requirements', 'gpu-image'])
def test_the_declared_ranges_admit_both_tested_environments(pins):
    """pyproject's ranges are stated, not pinned, and cover what CI installs."""
    from packaging.requirements import Requirement
    declared = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['dependencies']
    for requirement in map(Requirement, declared):
        assert requirement.specifier, f"{requirement.name} has no range"
        assert all(s.operator != '==' for s in requirement.specifier), requirement
        if requirement.name in pins:
            assert requirement.specifier.contains(pins[requirement.name]), (
                f"{requirement} does not admit the tested {pins[requirement.name]}")


def test_every_optional_extra_is_pinned_for_ci_within_its_range():
    """The extras' packages (onnx for the export command, ...) are installed by CI at
    the exact pins of requirements.txt, which their declared ranges admit."""
    from packaging.requirements import Requirement
    extras = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project'][
        'optional-dependencies']
    assert {'onnx', 'onnxscript', 'onnxruntime'} <= {
        Requirement(r).name for r in extras['export']}
    for requirement in map(Requirement, [r for group in extras.values() for r in group]):
        assert requirement.name in REQUIREMENTS, f"{requirement.name} is not pinned"
        assert requirement.specifier.contains(REQUIREMENTS[requirement.name]), (
            f"{requirement} does not admit the pinned {REQUIREMENTS[requirement.name]}")


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / 'README.md').read_text()
    assert 'make demo' in readme and 'make test' in readme
    ci = [line for line in (ROOT / '.ci' / 'run').read_text().splitlines()
          if line and not line.startswith('#')]
    assert ci[-1] == 'make test'


@pytest.mark.parametrize('ci, room_gb, kept', [('', 10 ** 6, True), ('true', 0, True),
                                                ('true', 10 ** 6, False)])
def test_ci_removes_the_first_environment_only_where_the_second_needs_its_room(
        tmp_path, ci, room_gb, kept):
    first = tmp_path / 'venv'
    (first / 'bin').mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ('CI', 'MAKEFLAGS', 'MAKELEVEL')}
    done = subprocess.run(['make', '-s', '-C', str(ROOT), 'room-for-gpu-image', f'CI={ci}',
                           f'VENV={first}', f'GPU_IMAGE_VENV={tmp_path / "second"}',
                           f'GPU_IMAGE_ROOM_GB={room_gb}'],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert first.is_dir() == kept
    assert ('removing' in done.stdout) == (not kept)


@pytest.mark.parametrize('room_gb, installed, beside', [(0, False, 'yes'), (10 ** 6, False, 'no'),
                                                      (0, True, 'no')])
def test_the_second_environment_installs_beside_the_suite_only_where_the_disk_holds_both(
        tmp_path, room_gb, installed, beside):
    second = tmp_path / 'second'
    if installed:
        second.mkdir()
        (second / '.installed').touch()
    env = {k: v for k, v in os.environ.items() if k not in ('MAKEFLAGS', 'MAKELEVEL')}
    done = subprocess.run(['make', '-s', '-C', str(ROOT), 'gpu-image-beside',
                           f'GPU_IMAGE_VENV={second}', f'GPU_IMAGE_ROOM_GB={room_gb}'],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == beside


GROUPED = """import os
import pytest


@pytest.fixture(scope='module', params=[
    pytest.param(case, marks=pytest.mark.xdist_group(f'case{case}')) for case in (0, 1)])
def case(request):
    return request.param


@pytest.mark.parametrize('test', range(3))
def test_grouped(case, test):
    with open(os.environ['WORKERS_FILE'], 'a') as out:
        out.write(f"{case} {os.environ['PYTEST_XDIST_WORKER']}\\n")
"""


def test_tests_of_one_xdist_group_run_on_one_worker(tmp_path):
    """make test's --dist loadgroup keeps each group on one worker, as the preemption
    tests need to build their costly fixture once: with some pytest and pytest-xdist
    versions the groups are silently ignored (pytest-xdist issue #1386)."""
    (tmp_path / 'test_grouped.py').write_text(GROUPED)
    workers = tmp_path / 'workers.txt'
    done = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-n', '2', '--dist',
                           'loadgroup', '-p', 'no:cacheprovider', str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'WORKERS_FILE': str(workers)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    ran = [line.split() for line in workers.read_text().splitlines()]
    assert len(ran) == 6
    for case in ('0', '1'):
        assert len({worker for c, worker in ran if c == case}) == 1, ran


def _build_wheel(out: Path) -> Path:
    """Builds the project's wheel from a copy of its sources (so that no build/ or
    egg-info lands in the checkout) and returns its path."""
    source = out / 'source'
    for name in ('pyproject.toml', 'README.md'):
        source.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for name in ('ffcv_imagenet', 'rn50_configs'):
        shutil.copytree(ROOT / name, source / name,
                        ignore=shutil.ignore_patterns('__pycache__', '*.so'))
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                    '--disable-pip-version-check', '-q', '-w', str(out / 'dist'), str(source)],
                   check=True, capture_output=True, timeout=300)
    return next((out / 'dist').glob('ffcv_imagenet-*.whl'))


@pytest.mark.slow
@pytest.mark.gpu_image
def test_an_installed_wheel_holds_the_tree_and_finds_recipes_by_name(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (ROOT / 'ffcv_imagenet').rglob('*.py'):
        assert str(path.relative_to(ROOT)) in names
    for recipe in (ROOT / 'rn50_configs').glob('*.yaml'):
        assert f'ffcv_imagenet/rn50_configs/{recipe.name}' in names

    # a fresh environment: the wheel installed in it, the pinned dependencies (torch,
    # ffcv, ...) seen through a path entry, never this checkout or its editable install
    env = tmp_path / 'env'
    venv.create(env, with_pip=True)
    python = env / 'bin' / 'python'
    subprocess.run([str(python), '-m', 'pip', 'install', '--no-deps', '--no-index', '-q',
                    '--disable-pip-version-check', str(wheel)], check=True, timeout=300)
    env_site = subprocess.run([str(python), '-c', 'import sysconfig; '
                               'print(sysconfig.get_paths()["purelib"])'],
                              capture_output=True, text=True, check=True).stdout.strip()
    dependencies = [Path(p) for p in site.getsitepackages() if 'site-packages' in p]
    (Path(env_site) / 'dependencies.pth').write_text(''.join(f'{p}\n' for p in dependencies))
    # and setuptools' distutils, which ffcv imports (Python 3.12 has none): its shim is
    # a .pth file, which a path entry does not run (the checkout's editable finder, in
    # another .pth there, stays out)
    for shim in (p / 'distutils-precedence.pth' for p in dependencies):
        if shim.exists():
            shutil.copy(shim, env_site)
    work = tmp_path / 'elsewhere'
    work.mkdir()
    clean = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}

    def run(*args):
        return subprocess.run([str(python), *args], cwd=work, env=clean,
                              capture_output=True, text=True, timeout=300)

    modules = ['ffcv_imagenet.' + str(p.relative_to(ROOT / 'ffcv_imagenet').with_suffix(''))
               .replace('/', '.') for p in (ROOT / 'ffcv_imagenet').rglob('*.py')
               if p.stem not in ('__init__', '__main__')]
    found = run('-c', 'import importlib, ffcv_imagenet\n'
                f'for m in {modules!r}: importlib.import_module(m)\n'
                'from ffcv_imagenet.cli.config import find_config_file\n'
                'print(ffcv_imagenet.__file__)\n'
                'print(find_config_file("rn50_88_epochs.yaml").resolve())')
    assert found.returncode == 0, found.stderr
    package_file, recipe = found.stdout.split()
    assert package_file.startswith(env_site), package_file
    assert recipe == str(Path(env_site).resolve() / 'ffcv_imagenet' / 'rn50_configs' /
                         'rn50_88_epochs.yaml')
    train = run('-m', 'ffcv_imagenet', 'train', '--config', 'rn50_88_epochs.yaml',
                '--data.train_dataset=missing.beton', '--data.val_dataset=missing.beton')
    assert train.returncode == 2
    assert train.stderr.strip() == ('error: data.train_dataset: .beton file not found: '
                                    'missing.beton')
    script = subprocess.run([str(env / 'bin' / 'ffcv-imagenet')], cwd=work, env=clean,
                            capture_output=True, text=True, timeout=120)
    assert 'convert' in script.stdout and 'train' in script.stdout


def _package_modules(folder=PACKAGE):
    """Every module under ``folder`` (``ffcv_imagenet`` or a sub-package), recursively:
    packages by their ``__init__``, ``__main__`` left out."""
    names = []
    for path in sorted(folder.rglob('*.py')):
        parts = list(path.relative_to(ROOT).with_suffix('').parts)
        if parts[-1] == '__main__':
            continue
        names.append('.'.join(parts[:-1] if parts[-1] == '__init__' else parts))
    return names


def test_every_module_of_the_package_imports():
    """In a fresh interpreter, each module on its own: what a version of torch, numpy or
    numba that a module cannot work with shows first."""
    modules = _package_modules()
    assert {'ffcv_imagenet.data.read.loaders', 'ffcv_imagenet.training.loop',
            'ffcv_imagenet.cli.train', 'ffcv_imagenet.tools.bench.steps'} <= set(modules)
    code = ('import importlib, sys, traceback\n'
            'failed = []\n'
            f'for name in {modules!r}:\n'
            '    try:\n'
            '        importlib.import_module(name)\n'
            '    except Exception:\n'
            '        failed.append(name + ": " + traceback.format_exc(limit=-1).strip())\n'
            'print("\\n".join(failed))\n')
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == '', done.stdout


# --- what CI's second environment runs ---------------------------------------------------

def _gpu_image_tests(makefile=ROOT / 'Makefile'):
    """The paths of GPU_IMAGE_TESTS, as the Makefile lists them (one assignment a line)."""
    paths = []
    for line in makefile.read_text().splitlines():
        found = re.match(r'GPU_IMAGE_TESTS\s*(\+=|:=|=)\s*([^#]*)', line)
        if found:
            paths = (paths if found[1] == '+=' else []) + found[2].split()
    return paths


def _imported_modules(path):
    """The ``ffcv_imagenet`` modules that the test file ``path`` imports by name:
    ``import ffcv_imagenet.x.y``, ``from ffcv_imagenet.x.y import ...`` and
    ``from ffcv_imagenet.x import y`` (anywhere in the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module} | {f'{node.module}.{alias.name}' for alias in node.names}
    return {name for name in names if name.startswith('ffcv_imagenet.')}


def _not_covered(listed):
    """The modules of ffcv_imagenet/data/ and ffcv_imagenet/training/ (recursively) that
    no test file under the ``listed`` paths imports."""
    files = set()
    for entry in map(ROOT.joinpath, listed):
        files |= {entry} if entry.is_file() else set(entry.rglob('test_*.py'))
    imported = set().union(*map(_imported_modules, files)) if files else set()
    library = [name for sub in ('data', 'training') for name in _package_modules(PACKAGE / sub)
               if not (ROOT / (name.replace('.', '/') + '/__init__.py')).is_file()]
    return sorted(set(library) - imported)


def test_the_gpu_image_list_names_test_files_and_folders_that_exist():
    listed = _gpu_image_tests()
    assert 'tests/test_install_offline.py' in listed and 'tests/test_packaging.py' in listed
    for path in listed:
        assert path.startswith('tests/') and (ROOT / path).exists(), path
    assert len(set(listed)) == len(listed)


def test_every_data_and_training_module_is_imported_by_a_test_on_the_gpu_image_list():
    """A module whose tests the second environment would not run fails here: add its
    test file (or folder) to GPU_IMAGE_TESTS in the Makefile, with the reason."""
    missing = _not_covered(_gpu_image_tests())
    assert missing == [], f"imported by no test file of GPU_IMAGE_TESTS: {', '.join(missing)}"


def test_the_coverage_check_sees_a_list_that_leaves_modules_out(tmp_path):
    makefile = tmp_path / 'Makefile'
    makefile.write_text('GPU_IMAGE_TESTS := tests/training  # a reason\n'
                        'OTHER := tests/data/read\n'
                        'GPU_IMAGE_TESTS += tests/data/test_synthetic.py  # another\n')
    listed = _gpu_image_tests(makefile)
    assert listed == ['tests/training', 'tests/data/test_synthetic.py']
    missing = _not_covered(listed)
    assert 'ffcv_imagenet.data.read.loaders' in missing
    assert 'ffcv_imagenet.data.write.writer' in missing
    assert not [name for name in missing if name.startswith('ffcv_imagenet.training.')]
    assert 'ffcv_imagenet.data.synthetic' not in missing
    nothing = _not_covered([])  # every module, the packages' __init__ left out
    assert 'ffcv_imagenet.training.loop' in nothing and 'ffcv_imagenet.data.folders' in nothing
    assert 'ffcv_imagenet.data.read' not in nothing and 'ffcv_imagenet.training' not in nothing
