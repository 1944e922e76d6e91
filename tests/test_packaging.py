"""The set-up files agree with each other and with the README."""
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    return dict(re.match(r'^\s*([A-Za-z0-9_.-]+)==(\S+)\s*$', line).groups()
                for line in lines if '==' in line and not line.lstrip().startswith('#'))


def test_requirements_and_environment_name_the_same_pins():
    requirements = _pins((ROOT / 'requirements.txt').read_text().splitlines())
    env = yaml.safe_load((ROOT / 'environment.yml').read_text())
    pip_section = next(d['pip'] for d in env['dependencies'] if isinstance(d, dict))
    assert _pins(pip_section) == requirements
    for package in ('torch', 'torchvision', 'ffcv', 'numba', 'numpy', 'fastargs', 'tqdm',
                    'pytest'):
        assert package in requirements


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / 'README.md').read_text()
    assert 'make demo' in readme and 'make test' in readme
    ci = [line for line in (ROOT / '.ci' / 'run').read_text().splitlines()
          if line and not line.startswith('#')]
    assert ci[-1] == 'make test'
