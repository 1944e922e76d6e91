"""The offline wheelhouse of .ci/wheelhouse.sh, and installing it on a simulated GPU node.

The wheelhouse: a portable ffcv (manylinux tag, local version 1.0.2+portable, honest
requirements, only libturbojpeg and libtbb bundled), this project's wheel with its C
extension and libjpeg bundled, every wheel installable here, the whole under 40 MiB;
the script's usage errors; the metadata rewrite.

The install: a node with torch, torchvision, numpy, numba, opencv-python-headless, tqdm
and pillow but no apt packages, compiler or internet runs ``pip install --no-index
--find-links WHEELHOUSE ffcv_imagenet`` and then converts and loads images.

The wheelhouse is built for the running Python into a temporary folder, or taken from
$FFCV_IMAGENET_WHEELHOUSE (its raw, unrepaired ffcv wheel then from the work folder
$FFCV_IMAGENET_WHEELHOUSE_WORK, by default the script's ~/.cache one).

The node is simulated, not assumed: a fresh venv sees torch & co. of this project's venv
through a path entry to a folder that links exactly those distributions (and the
opencv-python-headless wheel, the cv2 a node has), and every step runs in a private mount
namespace whose /usr/lib/x86_64-linux-gnu holds only the system libraries that Python,
torch, numpy, numba and cv2 load, minus libturbojpeg, OpenCV, X11/xcb, GL, TBB and
BLAS/LAPACK; /etc/ld.so.cache is empty there and the environment is cleared. The raw
ffcv wheel must fail to import in that namespace (and import outside it): the control
that proves the hiding.
"""
from __future__ import annotations

import base64
import concurrent.futures
import csv
import glob
import hashlib
import importlib.metadata
import io
import json
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import (BASE_LIBS, PYVER, ROOT, SCRIPT, TAG, requirement_names,
                           wheel_metadata)


pytestmark = [pytest.mark.skipif(
    sys.platform != 'linux' or os.uname().machine != 'x86_64',
    reason='the wheelhouse is for x86-64 Linux'),
    # one pytest-xdist worker builds the wheelhouse once and runs every test that uses it
    pytest.mark.xdist_group('wheelhouse')]


# --- the wheelhouse ----------------------------------------------------------------------

MAX_BYTES = 40 * 2**20


@pytest.mark.slow
@pytest.mark.gpu_image
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
    meta_version, requires, content = wheel_metadata(ffcv)
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
@pytest.mark.gpu_image
def test_the_project_wheel_carries_its_extension_and_libjpeg(wheelhouse):
    from packaging.utils import parse_wheel_filename

    project = [w for w in wheelhouse.wheels() if w.name.startswith('ffcv_imagenet-')]
    assert len(project) == 1, [w.name for w in wheelhouse.wheels()]
    _, _, _, tags = parse_wheel_filename(project[0].name)
    assert all(t.platform.startswith('manylinux') and t.interpreter == TAG for t in tags)
    _, _, content = wheel_metadata(project[0])
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
    version, requires, content = wheel_metadata(out)
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


# --- installed offline on a simulated GPU node -------------------------------------------

SYSTEM_LIBS = Path('/usr/lib/x86_64-linux-gnu')

# what the GPU node already has (cv2 comes from opencv-python-headless, fetched below)
NODE_DISTRIBUTIONS = ('torch', 'torchvision', 'numpy', 'numba', 'pillow', 'tqdm')

# the system libraries a node lacks and the namespace hides
HIDDEN = re.compile(r'^lib(turbojpeg|jpeg|opencv_|X11|X[a-z]|xcb|xkb|GL|EGL|OpenGL|glapi|gbm|drm|'
                    r'wayland|tbb|lapack|blas|openblas|gfortran|quadmath|tk|tcl)')


def _requirement_closure(names) -> dict[str, importlib.metadata.Distribution]:
    """The installed distributions that ``names`` need, extras followed."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    found, done, todo = {}, set(), [(name, '') for name in names]
    while todo:
        name, extra = todo.pop()
        name = canonicalize_name(name)
        if (name, extra) in done:
            continue
        done.add((name, extra))
        try:
            dist = found.get(name) or importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found[name] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({'extra': extra}):
                todo += [(req.name, '')] + [(req.name, e) for e in req.extras]
    return found


def _opencv_headless_version() -> str:
    for line in (ROOT / 'requirements.txt').read_text().splitlines():
        if line.startswith('opencv-python-headless=='):
            return line.split('==')[1].strip()
    return ''


@pytest.fixture(scope='module')
def node_site(tmp_path_factory):
    """A folder holding what a GPU node has: torch, torchvision, numpy, numba, pillow,
    tqdm and their requirements (links into this venv) and opencv-python-headless."""
    node = tmp_path_factory.mktemp('node-site')
    closure = _requirement_closure(NODE_DISTRIBUTIONS)
    for dist in closure.values():
        for top in sorted({Path(f).parts[0] for f in dist.files or []}):
            if top in ('..', '__pycache__'):
                continue
            source = Path(dist.locate_file(top))
            if source.exists() and not (node / top).exists():
                (node / top).symlink_to(source)
    version = _opencv_headless_version()
    spec = f'opencv-python-headless=={version}' if version else 'opencv-python-headless'
    got = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps',
                          '--only-binary', ':all:', '--disable-pip-version-check',
                          '--target', str(node), spec],
                         capture_output=True, text=True, timeout=600)
    if got.returncode != 0:
        pytest.skip(f'cannot fetch {spec}, the cv2 of a GPU node: {got.stderr[-500:]}')
    present = {p.name for p in node.iterdir()}
    for name in ('torch', 'torchvision', 'numpy', 'numba', 'llvmlite', 'PIL', 'tqdm', 'cv2'):
        assert name in present, name
    for absent in ('ffcv', 'fastargs', 'matplotlib', 'yaml', 'terminaltables',
                   'ffcv_imagenet'):
        assert absent not in present, absent
    yield node
    shutil.rmtree(node)  # the cv2 wheel unpacked (150 MB) and links, not kept


@dataclass
class Hidden:
    libs: Path          # bound over /usr/lib/x86_64-linux-gnu
    ld_cache: Path      # an empty file bound over /etc/ld.so.cache
    dropped: list[str]  # what the programs would have found on this machine

    def run(self, argv, *, cwd: Path, env: dict[str, str], timeout: int = 600):
        script = ('mount --bind "$1" /etc/ld.so.cache && '
                  f'mount --bind "$2" {SYSTEM_LIBS} && shift 2 && exec env -i "$@"')
        variables = [f'{k}={v}' for k, v in env.items()]
        return subprocess.run(['unshare', '--mount', '--propagation', 'private', 'sh', '-c',
                               script, 'sh', str(self.ld_cache), str(self.libs),
                               *variables, *map(str, argv)],
                              cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _ldd(path: str) -> list[str]:
    out = subprocess.run(['ldd', path], capture_output=True, text=True).stdout
    return re.findall(r'=> (/\S+)', out)


def _elf_files(folders) -> list[str]:
    found = []
    for folder in folders:
        for directory, _, files in os.walk(folder, followlinks=True):
            found += [os.path.join(directory, f) for f in files
                      if re.search(r'\.so(\.[0-9.]+)?$', f)]
    return found


@pytest.fixture(scope='module')
def hidden(request, tmp_path_factory) -> Hidden:
    if os.geteuid() != 0:
        pytest.skip('hiding the system libraries needs root (a private mount namespace)')
    if not shutil.which('unshare'):
        pytest.skip('unshare (util-linux) is not installed')
    probe = subprocess.run(['unshare', '--mount', 'true'], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f'unshare --mount is not permitted here: {probe.stderr.strip()}')
    if not SYSTEM_LIBS.is_dir() or Path('/lib/x86_64-linux-gnu').resolve() != SYSTEM_LIBS:
        pytest.skip(f'expects a merged-/usr Debian layout ({SYSTEM_LIBS})')
    node_site = request.getfixturevalue('node_site')   # only once the namespace is possible

    # what Python (but _tkinter), torch, numpy, numba and cv2 load from the system
    python = os.path.realpath(sys._base_executable)
    tools = [os.path.realpath(shutil.which(t)) for t in ('bash', 'env')]  # ldd is a script
    dynload = glob.glob(os.path.join(sys.base_prefix, 'lib', f'python{PYVER}',
                                     'lib-dynload', '*.so'))
    elves = [python, *tools] + [f for f in dynload if '_tkinter' not in f] + _elf_files([node_site])
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        paths = {p for found in pool.map(_ldd, elves) for p in found}
    wanted = set(BASE_LIBS) | {os.path.basename(p) for p in paths
                               if Path(p).parent.resolve() == SYSTEM_LIBS}
    libs = tmp_path_factory.mktemp('hidden-libs')
    dropped = sorted(n for n in wanted if HIDDEN.match(n))
    for name in sorted(wanted - set(dropped)):
        source = os.path.realpath(SYSTEM_LIBS / name)
        try:
            os.link(source, libs / name)
        except OSError:
            shutil.copy2(source, libs / name)
    ld_cache = libs.parent / 'empty-ld.so.cache'
    ld_cache.write_bytes(b'')
    return Hidden(libs, ld_cache, dropped)


def _minimal_env(home: Path, **more) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    return {'PATH': '/usr/bin:/bin', 'HOME': str(home), 'LANG': 'C.UTF-8',
            'TMPDIR': str(home), 'MPLCONFIGDIR': str(home / 'mpl'), **more}


def _system_copies() -> list[str]:
    """Sonames of libraries the namespace must hide, as this machine has them."""
    names = []
    for stem in ('libturbojpeg', 'libjpeg', 'libopencv_core', 'libopencv_imgproc', 'libX11',
                 'libxcb', 'libGLX', 'libGL', 'libtbb'):
        found = sorted(glob.glob(str(SYSTEM_LIBS / f'{stem}.so.*')), key=len)
        if found:
            names.append(os.path.basename(found[0]))
    return names


PROBE = '''
import ctypes, json, sys
loaded = {}
for name in sys.argv[1:]:
    try:
        ctypes.CDLL(name)
        loaded[name] = True
    except OSError:
        loaded[name] = False
print(json.dumps(loaded))
'''


LOAD = '''
import importlib.metadata, json, sys
import torch
from ffcv_imagenet import train_loader
import cv2, ffcv, numpy
loader = train_loader(sys.argv[1], batch_size=4, resolution=32, num_workers=1,
                      device=torch.device('cpu'))
batches = [(list(x.shape), str(x.dtype), list(y.shape), y.tolist()) for x, y in loader]
maps = sorted({line.split()[-1] for line in open('/proc/self/maps')
               if '.so' in line.split()[-1]})
print(json.dumps({
    'batches': batches,
    'ffcv': ffcv.__file__, 'ffcv_version': importlib.metadata.version('ffcv'),
    'torch': torch.__file__, 'torch_version': importlib.metadata.version('torch'),
    'numpy': numpy.__file__, 'cv2': cv2.__file__, 'maps': maps}))
'''


@pytest.mark.slow
@pytest.mark.gpu_image
def test_installs_offline_then_converts_and_loads_without_system_libraries(
        wheelhouse, hidden, node_site, tmp_path):
    # the namespace really lacks the system copies that exist outside it
    copies = _system_copies()
    assert any(c.startswith('libturbojpeg') for c in copies), copies
    assert any(c.startswith('libjpeg.') for c in copies), copies
    outside = subprocess.run([sys.executable, '-c', PROBE, *copies, 'libz.so.1'],
                             capture_output=True, text=True, check=True)
    assert all(json.loads(outside.stdout).values()), outside.stdout
    inside = hidden.run([sys._base_executable, '-S', '-c', PROBE, *copies, 'libz.so.1'],
                        cwd=tmp_path, env=_minimal_env(tmp_path / 'home'))
    assert inside.returncode == 0, inside.stderr
    assert json.loads(inside.stdout) == {**{c: False for c in copies}, 'libz.so.1': True}

    # a fresh venv that sees only the node's distributions, then the offline install
    env = tmp_path / 'env'
    venv.create(env, with_pip=True)
    python = env / 'bin' / 'python'
    site_packages = Path(subprocess.run(
        [str(python), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
        capture_output=True, text=True, check=True).stdout.strip())
    # a site folder, as a node's site-packages is: its own .pth files run too (on 3.12
    # setuptools' distutils shim, which ffcv's import of distutils needs)
    (site_packages / 'gpu_node.pth').write_text(
        f'import site; site.addsitedir({str(node_site)!r})\n')
    run_env = _minimal_env(tmp_path / 'home')
    # ensurepip of 3.11 and older puts its own old setuptools first on the path, where it
    # would shadow the node's (torch requires setuptools>=77): a node's env has one copy
    subprocess.run([str(python), '-m', 'pip', 'uninstall', '-y', '-q', 'setuptools'],
                   env={**run_env, 'PIP_CONFIG_FILE': '/dev/null'}, capture_output=True,
                   check=True)
    install = hidden.run([python, '-m', 'pip', 'install', '--no-index', '--find-links',
                          wheelhouse.folder, '--no-cache-dir', '--disable-pip-version-check',
                          'ffcv_imagenet'],
                         cwd=tmp_path, env={**run_env, 'PIP_CONFIG_FILE': '/dev/null'})
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    installed = {p.name.split('-')[0].lower() for p in site_packages.glob('*.dist-info')}
    assert {'ffcv', 'ffcv_imagenet', 'fastargs', 'terminaltables', 'matplotlib'} <= installed
    # the node's own torch, torchvision, numpy, numba, OpenCV, pillow and tqdm are kept
    assert not installed & {'torch', 'torchvision', 'numpy', 'numba', 'llvmlite', 'pillow',
                            'tqdm', 'opencv_python', 'opencv_python_headless'}, installed

    # ffcv's extension finds its libraries inside the wheel
    extension = next((site_packages / 'ffcv').glob('_libffcv*.so'))
    ldd = hidden.run(['ldd', extension], cwd=tmp_path, env=run_env)
    assert ldd.returncode == 0 and 'not found' not in ldd.stdout, ldd.stdout + ldd.stderr
    for lib in ('libturbojpeg', 'libtbb'):
        where = re.search(rf'{lib}\S* => (\S+)', ldd.stdout)
        assert where and Path(os.path.normpath(where[1])).parent == site_packages / 'ffcv.libs', \
            ldd.stdout
    # and this project's (jpeg_region.c) finds libjpeg inside its own
    extension = next((site_packages / 'ffcv_imagenet' / 'data' / 'read')
                     .glob('_jpeg_region*.so'))
    ldd = hidden.run(['ldd', extension], cwd=tmp_path, env=run_env)
    assert ldd.returncode == 0 and 'not found' not in ldd.stdout, ldd.stdout + ldd.stderr
    where = re.search(r'libjpeg\S* => (\S+)', ldd.stdout)
    assert where and (Path(os.path.normpath(where[1])).parent
                      == site_packages / 'ffcv_imagenet.libs'), ldd.stdout

    # images -> .beton -> batches, all through ffcv_imagenet in the namespace
    data, beton = tmp_path / 'images', tmp_path / 'train.beton'
    synthetic = hidden.run([python, '-m', 'ffcv_imagenet', 'synthetic', '--out', data,
                            '--classes', '2', '--train-per-class', '4',
                            '--val-per-class', '0', '--workers', '1'],
                           cwd=tmp_path, env=run_env)
    assert synthetic.returncode == 0, synthetic.stderr[-2000:]
    convert = hidden.run([python, '-m', 'ffcv_imagenet', 'convert',
                          f'--cfg.data_dir={data / "train"}', f'--cfg.write_path={beton}',
                          '--cfg.num_workers=1', '--cfg.max_resolution=64'],
                         cwd=tmp_path, env=run_env)
    assert convert.returncode == 0, convert.stdout[-2000:] + convert.stderr[-2000:]
    assert beton.stat().st_size > 0
    load = hidden.run([python, '-c', LOAD, beton], cwd=tmp_path, env=run_env)
    assert load.returncode == 0, load.stderr[-3000:]
    seen = json.loads(load.stdout.strip().splitlines()[-1])
    assert [b[:3] for b in seen['batches']] == [[[4, 3, 32, 32], 'torch.float32', [4]]] * 2
    assert sorted(label for b in seen['batches'] for label in b[3]) == [0] * 4 + [1] * 4
    assert seen['ffcv_version'] == '1.0.2+portable'
    assert seen['ffcv'].startswith(str(site_packages))
    for module in ('torch', 'numpy', 'cv2'):
        assert seen[module].startswith(str(node_site)), (module, seen[module])
    assert seen['torch_version'] == importlib.metadata.version('torch')
    turbojpeg = [m for m in seen['maps'] if 'turbojpeg' in m]
    assert turbojpeg and all('/ffcv.libs/' in m for m in turbojpeg), turbojpeg
    # libjpeg: this project's bundled copy (pillow may map its own), never the system's
    jpeg = [m for m in seen['maps'] if re.search(r'/libjpeg[-.]', m)]
    assert any('/ffcv_imagenet.libs/' in m for m in jpeg), jpeg
    assert not [m for m in jpeg if m.startswith(str(SYSTEM_LIBS))], jpeg


@pytest.mark.slow
@pytest.mark.gpu_image
def test_the_unrepaired_wheel_does_not_import_without_system_libraries(
        wheelhouse, hidden, node_site, tmp_path):
    raw = wheelhouse.raw_ffcv()
    target = tmp_path / 'raw'
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--no-index',
                    '--disable-pip-version-check', '--target', str(target), str(raw)],
                   check=True, capture_output=True, timeout=300)
    env = _minimal_env(tmp_path / 'home', PYTHONPATH=str(target))
    argv = [os.path.realpath(sys._base_executable), '-S', '-c',
            f'import site; site.addsitedir({str(node_site)!r}); '
            'import ffcv, ffcv._libffcv; print(ffcv._libffcv.__file__)']
    # outside the namespace it imports (the wheel is fine, the system has the libraries)
    outside = subprocess.run(['env', '-i', *[f'{k}={v}' for k, v in env.items()], *argv],
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert outside.returncode == 0, outside.stderr[-2000:]
    assert outside.stdout.strip().startswith(str(target))
    # inside it cannot find them
    inside = hidden.run(argv, cwd=tmp_path, env=env)
    assert inside.returncode != 0
    assert 'ImportError' in inside.stderr, inside.stderr[-2000:]
    assert re.search(r'lib(turbojpeg|opencv_\w+)\.so[.\d]*: cannot open shared object file',
                     inside.stderr), inside.stderr[-2000:]
