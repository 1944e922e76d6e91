"""Metadata helpers for .ci/wheelhouse.sh (standard library, plus `packaging` for `check`).

    portable_wheel.py rewrite WHEEL --version 1.0.2+portable --out DIR
        Rewrites an auditwheel-repaired ffcv wheel under a local version, with the
        requirements ffcv really imports (FFCV_REQUIRES below) in place of its declared
        ones (opencv-python, pytorch_pfn_extras, assertpy, psutil, ...). Every other file
        is copied byte for byte; RECORD is written afresh with the new paths and hashes.

    portable_wheel.py requirements DIR --python-version 3.12 --node-provides REGEX
                      [--pins requirements.txt]
        Prints, one per line, what the wheels in DIR require from elsewhere (markers
        evaluated for that Python on x86-64 Linux; the specifiers of one name merged),
        leaving out the distributions in DIR and those the node brings itself (REGEX on
        the canonical name). With --pins, a name whose exact pin satisfies the merged
        specifiers is printed as that pin.

    portable_wheel.py check DIR --python-version 3.12 --node-provides REGEX
        Fails unless every requirement of every wheel in DIR (markers evaluated for that
        Python on x86-64 Linux) is met by a wheel in DIR or names a distribution that the
        node brings itself (REGEX on the canonical name).
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import re
import sys
import zipfile
from pathlib import Path

# What `import ffcv` and its loading/writing path import, checked against ffcv 1.0.2:
#   numpy, numba, torch        everywhere
#   tqdm                       ffcv/writer.py
#   Pillow                     ffcv/fields/rgb_image.py (PIL.Image), undeclared upstream
#   fastargs, terminaltables   ffcv's config; fastargs imports terminaltables undeclared
#   setuptools (3.12+)         ffcv/pipeline/graph.py imports distutils
# Deliberately absent: a cv2 requirement. ffcv/fields/rgb_image.py imports cv2 for
# imencode/cvtColor/resize when writing, which opencv-python and opencv-python-headless
# both provide, and a requirement cannot say "either": declaring one would make pip pull a
# second OpenCV (both own the cv2 package) next to the other. ffcv's own C++ carries the
# OpenCV it needs, linked statically. pytorch_pfn_extras (only NormalizeImage on a CUDA
# device), assertpy (only ffcv.benchmarks) and psutil (never imported) are dropped too.
FFCV_REQUIRES = [
    'numpy',
    'numba',
    'torch',
    'tqdm',
    'Pillow',
    'fastargs',
    'terminaltables',
    'setuptools; python_version >= "3.12"',
]

NOTE = """\
This is ffcv {version}: the {upstream} sdist rebuilt by ffcv_imagenet's .ci/wheelhouse.sh
with OpenCV core+imgproc linked statically into ffcv._libffcv (symbols hidden) and
libturbojpeg/libtbb bundled by auditwheel, so that it needs no system OpenCV, libturbojpeg
or X11. It declares the modules ffcv imports; a cv2 module (opencv-python-headless or
opencv-python) must already be installed.

"""


def record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=')
    return 'sha256=' + digest.decode('ascii')


def rewrite_metadata(text: str, version: str, requires: list[str]) -> str:
    head, sep, body = text.partition('\n\n')
    lines = head.split('\n')
    upstream = next(line.split(':', 1)[1].strip() for line in lines
                    if line.startswith('Version:'))
    kept = []
    for line in lines:
        if line.startswith('Version:'):
            kept.append(f'Version: {version}')
        elif line.startswith('Requires-Dist:'):
            continue
        else:
            kept.append(line)
    kept += [f'Requires-Dist: {r}' for r in requires]
    return '\n'.join(kept) + '\n\n' + NOTE.format(version=version, upstream=upstream) + body


def rewrite(wheel: Path, version: str, out: Path) -> Path:
    parts = wheel.name[:-len('.whl')].split('-')
    name, old_version = parts[0], parts[1]
    old_info, new_info = f'{name}-{old_version}.dist-info/', f'{name}-{version}.dist-info/'
    out.mkdir(parents=True, exist_ok=True)
    target = out / '-'.join([name, version, *parts[2:]])
    target = target.with_name(target.name + '.whl')
    records = []
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(target, 'w', zipfile.ZIP_DEFLATED) as dst:
        names = src.namelist()
        if old_info + 'METADATA' not in names:
            raise SystemExit(f'{wheel.name}: no {old_info}METADATA')
        for info in src.infolist():
            if info.filename == old_info + 'RECORD':
                continue
            data = src.read(info)
            path = info.filename
            if path.startswith(old_info):
                path = new_info + path[len(old_info):]
            if path == new_info + 'METADATA':
                data = rewrite_metadata(data.decode('utf-8'), version, FFCV_REQUIRES).encode()
            copy = zipfile.ZipInfo(path, info.date_time)
            copy.external_attr = info.external_attr   # keeps the .so files' modes
            copy.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(copy, data)
            if not path.endswith('/'):   # RECORD lists files, not directory entries
                records.append(f'{path},{record_hash(data)},{len(data)}')
        record = new_info + 'RECORD'
        records.append(f'{record},,')
        info = zipfile.ZipInfo(record, (2020, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        dst.writestr(info, '\n'.join(records) + '\n', zipfile.ZIP_DEFLATED)
    print(f'    {wheel.name} -> {target.name}')
    return target


def metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        path = next(n for n in z.namelist()
                    if re.fullmatch(r'[^/]+\.dist-info/METADATA', n))
        head = z.read(path).decode('utf-8').partition('\n\n')[0]
    fields = [line.split(':', 1) for line in head.split('\n') if ':' in line]
    get = lambda key: [v.strip() for k, v in fields if k == key]  # noqa: E731
    return get('Name')[0], get('Version')[0], get('Requires-Dist')


def _marker_env(python_version: str) -> dict:
    return {'python_version': python_version, 'python_full_version': python_version + '.0',
            'implementation_name': 'cpython', 'platform_python_implementation': 'CPython',
            'sys_platform': 'linux', 'platform_system': 'Linux', 'os_name': 'posix',
            'platform_machine': 'x86_64', 'extra': ''}


def _requirements(wheels, python_version: str):
    """(wheel name, Requirement) for every requirement that applies to that Python."""
    from packaging.requirements import Requirement
    env = _marker_env(python_version)
    for wheel in wheels:
        name, _, requires = metadata(wheel)
        for text in requires:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate(env):
                yield name, req


def requirements(folder: Path, python_version: str, node_provides: str,
                 pins: Path | None) -> int:
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name

    wheels = sorted(folder.glob('*.whl'))
    here = {canonicalize_name(metadata(w)[0]) for w in wheels}
    node = re.compile(node_provides)
    merged: dict[str, tuple[str, SpecifierSet, set]] = {}
    for _, req in _requirements(wheels, python_version):
        key = canonicalize_name(req.name)
        if key in here or node.match(key):
            continue
        name, spec, extras = merged.get(key, (req.name, SpecifierSet(), set()))
        merged[key] = (name, spec & req.specifier, extras | set(req.extras))
    pinned = {}
    if pins is not None:
        for line in pins.read_text().splitlines():
            found = re.match(r'^\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+)', line)
            if found:
                pinned[canonicalize_name(found[1])] = found[2]
    for key, (name, spec, extras) in sorted(merged.items()):
        extra = f'[{",".join(sorted(extras))}]' if extras else ''
        if key in pinned and spec.contains(pinned[key], prereleases=True):
            print(f'{name}{extra}=={pinned[key]}')
        else:
            print(f'{name}{extra}{spec}')
    return 0


def check(folder: Path, python_version: str, node_provides: str) -> int:
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    wheels = sorted(folder.glob('*.whl'))
    have = {}
    for wheel in wheels:
        name, version, _ = metadata(wheel)
        have[canonicalize_name(name)] = Version(version)
    node = re.compile(node_provides)
    problems, from_node = [], set()
    for name, req in _requirements(wheels, python_version):
        key = canonicalize_name(req.name)
        if node.match(key):
            from_node.add(key)
        elif key not in have:
            problems.append(f'{name} needs {req}: no wheel of {req.name} here')
        elif not req.specifier.contains(have[key], prereleases=True):
            problems.append(f'{name} needs {req}: here is {req.name} {have[key]}')
    for problem in problems:
        print(f'    MISSING: {problem}', file=sys.stderr)
    if problems:
        return 1
    print(f'    every requirement met; from the node: {", ".join(sorted(from_node))}')
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)
    r = sub.add_parser('rewrite')
    r.add_argument('wheel', type=Path)
    r.add_argument('--version', required=True)
    r.add_argument('--out', type=Path, required=True)
    for command in ('requirements', 'check'):
        c = sub.add_parser(command)
        c.add_argument('folder', type=Path)
        c.add_argument('--python-version', required=True)
        c.add_argument('--node-provides', required=True)
        if command == 'requirements':
            c.add_argument('--pins', type=Path)
    args = parser.parse_args(argv)
    if args.command == 'rewrite':
        rewrite(args.wheel, args.version, args.out)
        return 0
    if args.command == 'requirements':
        return requirements(args.folder, args.python_version, args.node_provides, args.pins)
    return check(args.folder, args.python_version, args.node_provides)


if __name__ == '__main__':
    sys.exit(main())
