"""The offline wheelhouse of .ci/wheelhouse.sh: a portable ffcv (manylinux tag, local
version 1.0.2+portable, honest requirements, only libturbojpeg and libtbb bundled), this
project's wheel with its C extension and libjpeg bundled, every wheel installable here, the whole under 40 MiB; the script's usage errors; the metadata
rewrite. test_offline_install.py installs it on a simulated GPU node."""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import re
import subprocess
import sys
import zipfile

import pytest

from wheelhouse_build import BASE_LIBS, ROOT, SCRIPT, TAG, metadata, requirement_names

MAX_BYTES = 40 * 2**20

pytestmark = [pytest.mark.skipif(
    sys.platform != 'linux' or os.uname().machine != 'x86_64',
    reason='the wheelhouse is for x86-64 Linux'),
    # one pytest-xdist worker builds the session's wheelhouse for both modules
    pytest.mark.xdist_group('wheelhouse')]


@pytest.mark.slow
def test_wheelhouse_holds_a_portable_ffcv_and_stays_small(wheelhouse, tmp_path):
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename

    files = sorted(p.name for p in wheelhouse.folder.iterdir())
    assert files and all(f.endswith('.whl') for f in files), files
    total = sum(w.stat().st_size for w in wheelhouse.wheels())
    assert total < MAX_BYTES, f'{total / 2**20:.1f} MiB'

    names = {parse_wheel_filename(w.name)[0] for w in wheelhouse.wheels()}
    assert {'ffcv', 'ffcv-imagenet', 'fastargs', 'terminaltables', 'matplotlib',
            'pyyaml', 'tqdm'} <= names, names
    assert not names & {'torch', 'torchvision', 'numpy', 'numba', 'llvmlite', 'triton',
                        'opencv-python', 'opencv-python-headless'}, names
    # each wheel installs on this interpreter
    here = set(sys_tags())
    for wheel in wheelhouse.wheels():
        assert parse_wheel_filename(wheel.name)[3] & here, wheel.name

    ffcv = wheelhouse.ffcv()
    _, version, _, tags = parse_wheel_filename(ffcv.name)
    assert str(version) == '1.0.2+portable'
    assert all(t.platform.startswith('manylinux') for t in tags), ffcv.name
    assert {t.interpreter for t in tags} == {TAG}
    meta_version, requires, content = metadata(ffcv)
    assert meta_version == '1.0.2+portable'
    required = requirement_names(requires)
    assert not {r for r in required if 'opencv' in r or 'pfn' in r}, requires
    assert {'numpy', 'numba', 'torch', 'tqdm', 'pillow', 'fastargs',
            'terminaltables'} <= required, requires
    assert 'setuptools; python_version >= "3.12"' in requires

    # RECORD lists every file with its true hash and size
    record_name = next(n for n in content if n.endswith('.dist-info/RECORD'))
    assert record_name == 'ffcv-1.0.2+portable.dist-info/RECORD'
    rows = {row[0]: row[1:] for row in csv.reader(io.StringIO(content[record_name].decode()))}
    assert set(rows) == set(content)
    for name, data in content.items():
        if name == record_name:
            continue
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
        assert rows[name] == [f'sha256={digest}', str(len(data))], name

    # OpenCV lives inside the extension: bundled are libturbojpeg and libtbb, nothing else
    bundled = sorted(n.split('/', 1)[1] for n in content if n.startswith('ffcv.libs/'))
    assert [b.split('-')[0] for b in bundled] == ['libtbb', 'libturbojpeg'], bundled
    extension = next(n for n in content if re.fullmatch(r'ffcv/_libffcv\..*\.so', n))
    so = tmp_path / 'extension.so'
    so.write_bytes(content[extension])
    dynamic = subprocess.run(['readelf', '-d', str(so)], capture_output=True, text=True,
                             check=True).stdout
    needed = re.findall(r'\(NEEDED\).*\[(.+)\]', dynamic)
    # the bundled copies, else only glibc and the C++ runtime: no libopencv, GL, X11
    assert set(needed) - set(BASE_LIBS) == set(bundled), needed
    exported = subprocess.run(['nm', '-D', '--defined-only', str(so)], capture_output=True,
                              text=True, check=True).stdout
    assert not re.search(r' (_ZN2cv|_ZNK2cv|glX)', exported), 'OpenCV/glX symbols exported'


@pytest.mark.slow
def test_the_project_wheel_carries_its_extension_and_libjpeg(wheelhouse):
    from packaging.utils import parse_wheel_filename

    project = [w for w in wheelhouse.wheels() if w.name.startswith('ffcv_imagenet-')]
    assert len(project) == 1, [w.name for w in wheelhouse.wheels()]
    _, _, _, tags = parse_wheel_filename(project[0].name)
    assert all(t.platform.startswith('manylinux') and t.interpreter == TAG for t in tags)
    _, _, content = metadata(project[0])
    assert [n for n in content if re.fullmatch(r'ffcv_imagenet/data/read/_jpeg_region\..*\.so', n)]
    bundled = [n.split('/', 1)[1] for n in content if n.startswith('ffcv_imagenet.libs/')]
    assert [b.split('-')[0] for b in bundled] == ['libjpeg'], bundled


def test_script_refuses_a_bad_call():
    usage = subprocess.run(['bash', str(SCRIPT)], capture_output=True, text=True)
    assert usage.returncode == 2 and 'usage:' in usage.stderr
    old = subprocess.run(['bash', str(SCRIPT), '/nonexistent/wheelhouse', '3.9'],
                         capture_output=True, text=True)
    assert old.returncode != 0 and 'supports Python 3.11 and 3.12' in old.stderr


def test_metadata_rewrite_renames_the_version_and_rewrites_record(tmp_path):
    """portable_wheel.py on a tiny stand-in for the repaired wheel."""
    src = tmp_path / 'ffcv-1.0.2-cp311-cp311-manylinux_2_34_x86_64.whl'
    with zipfile.ZipFile(src, 'w') as z:
        z.writestr('ffcv/__init__.py', 'x = 1\n')
        info = zipfile.ZipInfo('ffcv.libs/libturbojpeg-0.so.0')
        info.external_attr = 0o755 << 16
        z.writestr(info, b'\x7fELF')
        z.writestr('ffcv-1.0.2.dist-info/METADATA',
                   'Metadata-Version: 2.1\nName: ffcv\nVersion: 1.0.2\n'
                   'Requires-Dist: opencv-python\nRequires-Dist: pytorch_pfn_extras\n\n'
                   'the description\n')
        z.writestr('ffcv-1.0.2.dist-info/WHEEL', 'Wheel-Version: 1.0\n')
        z.writestr('ffcv-1.0.2.dist-info/RECORD', 'stale,,\n')
    subprocess.run([sys.executable, str(ROOT / '.ci' / 'portable_wheel.py'), 'rewrite',
                    str(src), '--version', '1.0.2+portable', '--out', str(tmp_path / 'out')],
                   check=True, capture_output=True)
    out = tmp_path / 'out' / 'ffcv-1.0.2+portable-cp311-cp311-manylinux_2_34_x86_64.whl'
    version, requires, content = metadata(out)
    assert version == '1.0.2+portable'
    assert requirement_names(requires) == {'numpy', 'numba', 'torch', 'tqdm', 'pillow',
                                            'fastargs', 'terminaltables', 'setuptools'}
    assert content['ffcv/__init__.py'] == b'x = 1\n'
    assert b'the description' in content['ffcv-1.0.2+portable.dist-info/METADATA']
    assert not [n for n in content if n.startswith('ffcv-1.0.2.dist-info/')]
    record = content['ffcv-1.0.2+portable.dist-info/RECORD'].decode()
    assert 'stale' not in record and 'ffcv/__init__.py,sha256=' in record
    with zipfile.ZipFile(out) as z:
        assert z.getinfo('ffcv.libs/libturbojpeg-0.so.0').external_attr >> 16 == 0o755


