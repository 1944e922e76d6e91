"""The converter timed at growing sizes and projected to ImageNet: hours, disk, memory.

    python -m ffcv_imagenet bench convert --images 3000 30000 \
        --preset rn50-published rn18-published fast-256 --workers 2 \
        --out /tmp/conv_data --json bench_convert.json

For each image count a generated tree of 10 classes (:mod:`ffcv_imagenet.data.synthetic`,
about 400 x 350 pixels on average, like ImageNet's train images) is written once under
``--out`` (and reused by a later run), then converted with each preset by
``python -m ffcv_imagenet convert`` in a fresh process, as a user runs it. Each run gives
wall seconds (start-up included), the converter's own seconds (its summary line),
images/sec, the peak memory of the converter's whole process tree (its writer workers
and their decoding sandboxes) and the ``.beton``'s bytes per image; the ``.beton`` is
deleted once measured (``--keep-betons`` keeps it).

Memory is the sum over the tree's processes of their proportional set size (PSS: a page
shared by n processes counts 1/n in each), sampled every 0.2 s from /proc; the sum of
their resident sizes (RSS, which counts shared pages once per process) is kept beside it.

Each quantity is fitted as ``fixed + per_image x images`` over the counts and projected
to ``--target-images`` (ImageNet-1k's train split). The per-image figures at the
smallest and largest counts say whether it is linear. The projection assumes that
ImageNet's images, after the preset's resize, decode and compress like the generated
ones (their sizes are printed beside ImageNet's).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ...data.synthetic import generate
from ...data.write.storage import find_preset

PACKAGE_ROOT = Path(__file__).resolve().parents[3]  # the folder holding ffcv_imagenet/
IMAGENET_TRAIN_IMAGES = 1_281_167
IMAGENET_MEAN_SIZE = (400, 350)  # pixels (width, height) of the average ImageNet train image
IMAGENET_MEAN_JPEG_BYTES = 110_000  # ImageNet's train JPEGs: about 140 GB / 1.28M files
CLASSES = 10
SAMPLE_SECONDS = 0.2  # how often the process tree's memory is read
SIZE_SAMPLE = 2000  # source images whose dimensions are read (evenly spaced)
# per-image figures at the smallest and largest count closer than this (relative) are
# called the same: the machine's load moves times by about this much
TOLERANCE = {'time': 0.2, 'memory': 0.1, 'disk': 0.05}
_SUMMARY = re.compile(r'wrote (\d+) images, .*? in ([\d.]+) s')


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process visible in /proc."""
    parents = {}
    for entry in os.scandir('/proc'):
        if not entry.name.isdigit():
            continue
        try:
            with open(f'/proc/{entry.name}/stat') as handle:
                stat = handle.read()
        except OSError:  # it ended meanwhile
            continue
        # the command name (field 2) may hold spaces and ')': the rest follows its last ')'
        parents[int(entry.name)] = int(stat.rsplit(')', 1)[1].split()[1])
    return parents


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants now alive (pids)."""
    children: dict[int, list[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def _kib(pid: int, file: str, key: str) -> int | None:
    """The ``key`` line of /proc/PID/FILE in KiB; None when unreadable (ended, or an
    old kernel without smaps_rollup)."""
    try:
        with open(f'/proc/{pid}/{file}') as handle:
            for line in handle:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class TreeMemory(threading.Thread):
    """Reads the memory of a process and all its descendants every ``interval`` seconds
    until :meth:`stop`; keeps the peaks of the sums, in bytes, and the most processes."""

    def __init__(self, root: int, interval: float = SAMPLE_SECONDS):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak_pss = self.peak_rss = self.peak_processes = self.samples = 0
        self._done = threading.Event()

    def sample(self) -> None:
        pids = process_tree(self.root)
        pss = sum(filter(None, (_kib(pid, 'smaps_rollup', 'Pss:') for pid in pids)))
        rss = sum(filter(None, (_kib(pid, 'status', 'VmRSS:') for pid in pids)))
        self.peak_pss = max(self.peak_pss, pss * 1024)
        self.peak_rss = max(self.peak_rss, rss * 1024)
        self.peak_processes = max(self.peak_processes, len(pids))
        self.samples += 1

    def run(self) -> None:
        while True:
            self.sample()
            if self._done.wait(self.interval):
                return

    def stop(self) -> None:
        self._done.set()
        self.join()


def synthetic_tree(out: Path, images: int, workers: int) -> tuple[Path, float]:
    """The train folder of ``images`` generated images (``images / 10`` per class) under
    ``out``, and the seconds spent generating it (0: a complete one was there; the
    generator's bytes depend only on its arguments)."""
    root = out / f'synthetic_{images}'
    train = root / 'train'
    if train.is_dir() and sum(1 for _ in train.glob('*/*.JPEG')) == images:
        return train, 0.0
    start = time.perf_counter()
    generate(root, classes=CLASSES, train_per_class=images // CLASSES, val_per_class=0,
             workers=workers)
    return train, time.perf_counter() - start


def source_sizes(train: Path) -> dict:
    """Mean width, height, pixels and file bytes of the JPEGs under ``train``, and the
    (width, height) pairs of an evenly spaced sample of them (pixels)."""
    files = sorted(train.glob('*/*.JPEG'))
    sample = files[::max(1, len(files) // SIZE_SAMPLE)]
    sizes = []
    for path in sample:
        with Image.open(path) as image:
            sizes.append(image.size)
    sizes = np.array(sizes, dtype=np.float64)
    return {'images': len(files), 'mean_width': float(sizes[:, 0].mean()),
            'mean_height': float(sizes[:, 1].mean()),
            'mean_pixels': float((sizes[:, 0] * sizes[:, 1]).mean()),
            'mean_bytes': float(np.mean([path.stat().st_size for path in files])),
            'sizes': sizes.tolist()}


def stored_pixels(sizes: list, max_resolution: int) -> float:
    """Mean pixels per image after ffcv's resize to ``max_resolution`` on the longest
    side (only images larger than that shrink)."""
    sizes = np.array(sizes, dtype=np.float64)
    scale = np.minimum(1.0, max_resolution / sizes.max(axis=1)) if max_resolution else 1.0
    return float((np.floor(sizes[:, 0] * scale) * np.floor(sizes[:, 1] * scale)).mean())


def convert_command(train: Path, beton: Path, preset: str, workers: int) -> list[str]:
    """The conversion a user runs, in this Python."""
    return [sys.executable, '-m', 'ffcv_imagenet', 'convert', '--cfg.split=train',
            f'--cfg.data_dir={train}', f'--cfg.write_path={beton}', '--preset', preset,
            f'--cfg.num_workers={workers}']


def _delete_beton(beton: Path) -> None:
    for path in (beton, *(Path(str(beton) + suffix) for suffix in
                          ('.classes.json', '.storage.json', '.skipped.txt'))):
        path.unlink(missing_ok=True)


def time_conversion(train: Path, beton: Path, preset: str, workers: int,
                    keep: bool = False) -> dict:
    """Converts ``train`` to ``beton`` in a fresh process, its output in ``<beton>.log``.
    Returns wall and converter seconds, the peak memory of its process tree (bytes),
    the .beton's bytes and the 1-minute load average before it.
    Raises:
        RuntimeError: the conversion failed, with the last line it printed.
    """
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT),
                                                      env.get('PYTHONPATH')]))
    log_path = Path(str(beton) + '.log')
    load = os.getloadavg()[0]
    with open(log_path, 'w') as log:
        start = time.perf_counter()
        process = subprocess.Popen(convert_command(train, beton, preset, workers),
                                   stdout=log, stderr=subprocess.STDOUT, env=env)
        memory = TreeMemory(process.pid)
        memory.start()
        code = process.wait()
        wall = time.perf_counter() - start
        memory.stop()
    text = log_path.read_text(errors='replace')
    if code != 0:
        last = text.strip().replace('\r', '\n').splitlines()[-1:] or ['no output']
        raise RuntimeError(f"converting {train} with {preset} failed (exit {code}): "
                           f"{last[0]} (log: {log_path})")
    summary = _SUMMARY.search(text)
    size = beton.stat().st_size
    if not keep:
        _delete_beton(beton)
    return {'wall_seconds': wall, 'converter_seconds': float(summary[2]) if summary else None,
            'written': int(summary[1]) if summary else None, 'peak_pss_bytes': memory.peak_pss,
            'peak_rss_bytes': memory.peak_rss, 'processes': memory.peak_processes,
            'memory_samples': memory.samples, 'beton_bytes': size, 'load_average': load}


def linear_fit(counts: list[int], values: list[float], flat: bool) -> tuple[float, float]:
    """(fixed, per_image) of ``value = fixed + per_image x images``, least squares. Where
    the fit is meaningless (one count, a negative part) a flat quantity (``flat``:
    memory) becomes its largest value, any other the largest count's value per image."""
    if len(counts) > 1:
        per_image, fixed = np.polyfit(np.array(counts, float), np.array(values, float), 1)
        if per_image >= 0 and fixed >= 0:
            return float(fixed), float(per_image)
        if flat and per_image < 0:
            return float(max(values)), 0.0
    elif flat:
        return float(values[0]), 0.0
    largest = int(np.argmax(counts))
    return 0.0, values[largest] / counts[largest]


def _verdict(kind: str, counts: list[int], values: list[float], fixed: float,
             per_image: float, unit: float, label: str) -> dict:
    """Whether ``values`` grow in proportion to ``counts``, in words and figures."""
    small, large = (values[i] / counts[i] for i in (0, -1))
    ratio = small / large if large else None
    if len(counts) < 2 or ratio is None:
        words = f"unknown: one count ({counts[0]} images)" if ratio else "unknown: zero"
    elif abs(ratio - 1) <= TOLERANCE[kind]:
        words = "linear"
    elif ratio > 1 and 0 <= per_image * counts[-1] < TOLERANCE[kind] * fixed:
        words = (f"nearly constant: {fixed / unit:,.1f} {label} per run, growing "
                 f"{per_image * 1000 / unit:,.3g} {label} per 1000 images")
    elif ratio > 1 and fixed > 0:
        words = (f"linear plus a fixed part: {fixed / unit:,.1f} {label} per run, then "
                 f"{per_image * 1000 / unit:,.3g} {label} per 1000 images")
    elif ratio > 1:
        words = (f"not linear: {ratio:.2f}x as much per image at {counts[0]} images as at "
                 f"{counts[-1]}, and no positive fixed part fits")
    else:
        words = f"more than linear: {1 / ratio:.2f}x per image at {counts[-1]} images"
    return {'verdict': words, 'per_image': [value / count for value, count
                                            in zip(values, counts)],
            'small_over_large': ratio}


def _time_part(counts: list[int], runs: list[dict], target: int) -> dict:
    """Time as start-up (the median of wall less the converter's own seconds: interpreter
    and imports) plus the converter's seconds fitted over the counts."""
    own = [run['converter_seconds'] for run in runs]
    if None in own:  # no summary line to read: the wall time alone
        own, startup = [run['wall_seconds'] for run in runs], 0.0
    else:
        startup = float(np.median([run['wall_seconds'] - run['converter_seconds']
                                   for run in runs]))
    fixed, per_image = linear_fit(counts, own, flat=False)
    walls = [run['wall_seconds'] for run in runs]
    verdict = _verdict('time', counts, walls, startup + fixed, per_image, 1.0, 's')
    own_verdict = _verdict('time', counts, own, fixed, per_image, 1.0, 's')
    if verdict['verdict'] != 'linear' and own_verdict['verdict'] == 'linear':
        verdict['verdict'] = (f"linear once a fixed start-up of {startup:.1f} s per run "
                              "(interpreter, imports) is set apart")
    return {**verdict, 'startup_seconds': startup, 'fixed': startup + fixed,
            'per_image_fit': per_image, 'at_target': startup + fixed + per_image * target}


def analyse(counts: list[int], runs: list[dict], target: int, workers: int) -> dict:
    """Linearity and projection to ``target`` images of one preset's ``runs`` (one per
    count, in the order of ``counts``): hours, disk GB, peak memory GiB."""
    result = {'time': _time_part(counts, runs, target)}
    for kind, key, flat in (('memory', 'peak_pss_bytes', True), ('disk', 'beton_bytes', False)):
        values = [run[key] for run in runs]
        fixed, per_image = linear_fit(counts, values, flat)
        result[kind] = {**_verdict(kind, counts, values, fixed, per_image, 2.0**20, 'MiB'),
                        'fixed': fixed, 'per_image_fit': per_image,
                        'at_target': fixed + per_image * target}
    seconds = result['time']['at_target']
    result['projection'] = {
        'images': target, 'workers': workers, 'hours': seconds / 3600,
        'worker_hours': seconds * workers / 3600,
        'images_per_second_per_worker': target / seconds / workers,
        'disk_gb': result['disk']['at_target'] / 1e9,
        'peak_memory_gib': result['memory']['at_target'] / 2**30}
    return result


def bench_convert(counts: list[int], presets: list[str], workers: int, out: str | os.PathLike,
                  target: int = IMAGENET_TRAIN_IMAGES, keep_betons: bool = False) -> dict:
    """Generates ``counts`` images (multiples of 10) once each under ``out`` and converts
    them with each preset (see the module docstring). Returns sources, runs, and per
    preset the linearity verdicts and the projection to ``target`` images.
    Raises:
        ValueError: a count that is not a positive multiple of 10, an unknown preset.
        RuntimeError: a conversion failed.
    """
    counts = sorted(set(counts))
    if not counts or any(n < CLASSES or n % CLASSES for n in counts):
        raise ValueError(f"--images: each count must be a positive multiple of {CLASSES} "
                         f"(that many classes), got {counts}")
    chosen = [find_preset(name) for name in presets]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sources, runs = {}, []
    for images in counts:
        train, seconds = synthetic_tree(out, images, workers)
        sources[str(images)] = {**source_sizes(train), 'generate_seconds': seconds}
        for preset in chosen:
            run = time_conversion(train, out / f'{preset.name}_{images}.beton', preset.name,
                                  workers, keep_betons)
            run.update(preset=preset.name, images=images,
                       images_per_second=images / run['wall_seconds'],
                       bytes_per_image=run['beton_bytes'] / images,
                       stored_pixels=stored_pixels(sources[str(images)]['sizes'],
                                                   preset.max_resolution))
            runs.append(run)
    analysis = {preset.name: analyse(counts, [r for r in runs if r['preset'] == preset.name],
                                     target, workers) for preset in chosen}
    for source in sources.values():
        del source['sizes']
    return {'counts': counts, 'presets': presets, 'workers': workers, 'target_images': target,
            'cpus': os.cpu_count(), 'memory': 'peak sum of PSS over the process tree',
            'imagenet': {'mean_width': IMAGENET_MEAN_SIZE[0],
                         'mean_height': IMAGENET_MEAN_SIZE[1],
                         'mean_bytes': IMAGENET_MEAN_JPEG_BYTES},
            'sources': sources, 'runs': runs, 'analysis': analysis}


def _runs_table(result: dict) -> list[str]:
    lines = [(f"{'preset':<16}{'images':>8}{'wall s':>9}{'img/s':>8}{'start s':>9}"
              f"{'PSS MiB':>9}{'RSS MiB':>9}{'procs':>6}{'KB/img':>8}{'stored px':>10}"
              f"{'load':>6}")]
    for run in result['runs']:
        start = ('' if run['converter_seconds'] is None
                 else f"{run['wall_seconds'] - run['converter_seconds']:.1f}")
        lines.append(f"{run['preset']:<16}{run['images']:>8}{run['wall_seconds']:>9.1f}"
                     f"{run['images_per_second']:>8.1f}{start:>9}"
                     f"{run['peak_pss_bytes'] / 2**20:>9.0f}{run['peak_rss_bytes'] / 2**20:>9.0f}"
                     f"{run['processes']:>6}{run['bytes_per_image'] / 1000:>8.1f}"
                     f"{run['stored_pixels'] / 1000:>9.0f}k{run['load_average']:>6.2f}")
    return lines


def format_convert_report(result: dict) -> str:
    """The runs, the linearity verdicts and the projection, as text for a terminal."""
    net = result['imagenet']
    workers = f"{result['workers']} worker{'s' if result['workers'] > 1 else ''}"
    lines = [(f"conversion with {workers} on {result['cpus']} CPUs, fresh "
              f"process per run; memory: {result['memory']}")]
    for images, source in result['sources'].items():
        lines.append(f"source {images}: {source['mean_width']:.0f} x "
                     f"{source['mean_height']:.0f} px on average "
                     f"({source['mean_pixels'] / 1000:.0f}k px), "
                     f"{source['mean_bytes'] / 1000:.0f} KB per JPEG, generated in "
                     f"{source['generate_seconds']:.0f} s (0: reused)")
    lines.append(f"ImageNet train: about {net['mean_width']} x {net['mean_height']} px "
                 f"({net['mean_width'] * net['mean_height'] / 1000:.0f}k px), "
                 f"{net['mean_bytes'] / 1000:.0f} KB per JPEG")
    lines += ['', *_runs_table(result), '', ('linear in the images? (per image at '
                                             f"{result['counts'][0]} vs {result['counts'][-1]})")]
    for name, analysis in result['analysis'].items():
        lines.append(f"  {name}: time {analysis['time']['verdict']}; memory "
                     f"{analysis['memory']['verdict']}; disk {analysis['disk']['verdict']}")
    lines += ['', (f"projected to {result['target_images']:,} images (fixed + per image "
                   f"x images), {workers}:"),
              (f"{'preset':<16}{'hours':>8}{'worker-h':>10}{'img/s/worker':>14}"
               f"{'disk GB':>9}{'peak GiB':>10}")]
    for name, analysis in result['analysis'].items():
        p = analysis['projection']
        lines.append(f"{name:<16}{p['hours']:>8.1f}{p['worker_hours']:>10.1f}"
                     f"{p['images_per_second_per_worker']:>14.1f}{p['disk_gb']:>9.0f}"
                     f"{p['peak_memory_gib']:>10.2f}")
    lines.append("disk assumes ImageNet's images, after each preset's resize, keep the "
                 "pixels and JPEG sizes of these ('stored px')")
    return '\n'.join(lines)
