"""Microseconds per resize of one crop: an older revision's resize kernel beside
today's, one thread, no decoding.

    python benchmarks/resize_microbench.py [--old 64a93e5] [--reps 300] [--best-of 9]

One 256 x 256 random uint8 image; crops of side 100 and 140 (2 horizontal taps when
shrunk to 160 px: enlarged) and 175 and 250 (3 taps), at (10, 12), resized to 160 x 160
with the flip on, uint8 (levels) and float32 (normalised). Each figure is the best of
``--best-of`` timings of ``--reps`` calls, after one untimed call (compilation). Prints a
Markdown table.

The older kernel is ``resize.py`` of revision ``--old``, read with ``git show`` (so run
from a git checkout) into a temporary folder and imported on its own: this works for
revisions whose ``resize.py`` is one self-contained file, 64dc780 up to 2735921 (from
66429da on it imports ``resize_vector.py``). Both kernels get a fresh numba disk
cache (a temporary ``NUMBA_CACHE_DIR``, unless one is set). The new kernel is that of
the ``ffcv_imagenet`` Python imports: this checkout's, or another revision's in either
package layout with ``PYTHONPATH`` set to its export (with its extension built), such
as ``benchmarks/ab_revisions.sh`` leaves in ``/tmp/ab_revisions/<commit>``.
"""
import argparse
import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time

parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
parser.add_argument('--old', default='64a93e5', help='git revision of the older kernel')
parser.add_argument('--reps', type=int, default=300)
parser.add_argument('--best-of', type=int, default=9)
args = parser.parse_args()

folder = tempfile.mkdtemp(prefix='resize_old_')
atexit.register(shutil.rmtree, folder, ignore_errors=True)
os.environ.setdefault('NUMBA_CACHE_DIR', os.path.join(folder, 'numba_cache'))
for path in ('ffcv_imagenet/data/read/resize.py', 'ffcv_imagenet/data/resize.py'):
    shown = subprocess.run(['git', 'show', f'{args.old}:{path}'], capture_output=True)
    if shown.returncode == 0:
        break
else:
    sys.exit(f"no resize.py in revision {args.old}")
if b'from .' in shown.stdout:
    sys.exit(f"resize.py of {args.old} imports other modules of the package: "
             "only revisions before 66429da can be timed this way")
with open(os.path.join(folder, 'resize_old.py'), 'wb') as handle:
    handle.write(shown.stdout)
sys.path.insert(0, folder)

import numpy as np  # noqa: E402 (after NUMBA_CACHE_DIR)
import resize_old  # noqa: E402

try:  # the package layout since 827b4a4
    from ffcv_imagenet.data.read import resize
except ModuleNotFoundError as error:  # an older revision on PYTHONPATH
    if error.name != 'ffcv_imagenet.data.read':
        raise
    from ffcv_imagenet.data import resize

img = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
ks = {'old': resize_old.resize_kernel(), 'new': resize.resize_kernel()}


def bench(k, crop, dtype, reps=args.reps):
    out = np.empty((160, 160, 3), dtype)
    n1, n2 = resize.scratch_sizes(256, 256, 160, 160)  # today's: at least the old ones
    scratch, cols = np.empty(n1, np.float32), np.empty(n2, np.uint64)
    mul = (np.ones(3, np.float32) if dtype == np.uint8
           else np.array([1 / 58., 1 / 57., 1 / 57.], np.float32))
    add = (np.zeros(3, np.float32) if dtype == np.uint8
           else np.array([-2.1, -2.0, -1.8], np.float32))
    k(img, 10, 12, crop, crop, out, True, mul, add, scratch, cols)
    t = time.perf_counter()
    for _ in range(reps):
        k(img, 10, 12, crop, crop, out, True, mul, add, scratch, cols)
    return (time.perf_counter() - t) / reps * 1e6


print(f'old = {args.old}, new = this checkout; µs per crop')
print('| crop side | old uint8 | new uint8 | old float32 (normalised) | new float32 |')
print('|---|---|---|---|---|')
for crop in (100, 140, 175, 250):
    r = {}
    for d in (np.uint8, np.float32):
        for n, k in ks.items():
            r[n, d] = min(bench(k, crop, d) for _ in range(args.best_of))
    taps = 2 if crop < 160 else 3
    print(f"| {crop} ({taps} taps) | {r['old', np.uint8]:.1f} | {r['new', np.uint8]:.1f} "
          f"| {r['old', np.float32]:.1f} | {r['new', np.float32]:.1f} |")
