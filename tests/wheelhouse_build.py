"""The wheelhouse of .ci/wheelhouse.sh as the tests see it: built for the running Python
into a temporary folder, or taken from $FFCV_IMAGENET_WHEELHOUSE (its raw, unrepaired ffcv
wheel then from the work folder $FFCV_IMAGENET_WHEELHOUSE_WORK, by default the script's
~/.cache one). Used by test_wheelhouse.py and test_offline_install.py through the
session fixture ``wheelhouse`` in conftest.py."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / '.ci' / 'wheelhouse.sh'
PYVER = '%d.%d' % sys.version_info[:2]
TAG = 'cp%d%d' % sys.version_info[:2]
# always kept: glibc, the C++ runtime and zlib
BASE_LIBS = ('ld-linux-x86-64.so.2', 'libc.so.6', 'libm.so.6', 'libpthread.so.0', 'libdl.so.2',
             'librt.so.1', 'libutil.so.1', 'libresolv.so.2', 'libstdc++.so.6',
             'libgcc_s.so.1', 'libz.so.1')


@dataclass
class Wheelhouse:
    folder: Path
    work: Path

    def wheels(self) -> list[Path]:
        return sorted(self.folder.glob('*.whl'))

    def ffcv(self) -> Path:
        found = [w for w in self.wheels() if w.name.startswith('ffcv-')]
        assert len(found) == 1, [w.name for w in self.wheels()]
        return found[0]

    def raw_ffcv(self) -> Path:
        found = sorted((self.work / 'raw').glob(f'ffcv-*-{TAG}-{TAG}-linux_x86_64.whl'))
        if not found:
            pytest.fail(f'no raw ffcv wheel for {TAG} in {self.work}/raw: set '
                        'FFCV_IMAGENET_WHEELHOUSE_WORK to the work folder of the build')
        return found[0]


def build_or_reuse(tmp_path_factory) -> Wheelhouse:
    """The wheelhouse of $FFCV_IMAGENET_WHEELHOUSE when set (built once by CI), else one
    built for the running Python into a temporary folder."""
    given = os.environ.get('FFCV_IMAGENET_WHEELHOUSE')
    if given:
        work = os.environ.get('FFCV_IMAGENET_WHEELHOUSE_WORK') or os.path.join(
            os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'),
            'ffcv_imagenet', f'wheelhouse-{TAG}')
        return Wheelhouse(Path(given).resolve(), Path(work).resolve())
    base = tmp_path_factory.mktemp('wheelhouse')
    folder, work = base / 'wheelhouse', base / 'work'
    env = dict(os.environ, FFCV_IMAGENET_WHEELHOUSE_WORK=str(work))
    built = subprocess.run(['bash', str(SCRIPT), str(folder), PYVER], env=env, cwd=base,
                           capture_output=True, text=True, timeout=1200)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert 'total:' in built.stdout
    return Wheelhouse(folder, work)


def metadata(wheel: Path) -> tuple[str, list[str], dict[str, bytes]]:
    """(Version, Requires-Dist, {file: bytes}) of a wheel."""
    with zipfile.ZipFile(wheel) as z:
        files = {n: z.read(n) for n in z.namelist() if not n.endswith('/')}
    meta = next(v for k, v in files.items() if re.fullmatch(r'[^/]+\.dist-info/METADATA', k))
    head = meta.decode().partition('\n\n')[0].splitlines()
    version = next(line.split(':', 1)[1].strip() for line in head if line.startswith('Version:'))
    requires = [line.split(':', 1)[1].strip() for line in head
                if line.startswith('Requires-Dist:')]
    return version, requires, files


def requirement_names(requires: list[str]) -> set[str]:
    return {re.split(r'[\s;<>=!~\[(]', r, maxsplit=1)[0].lower().replace('_', '-')
            for r in requires}
