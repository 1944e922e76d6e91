"""Seconds of one tiny training run (the tests' ``tiny_args``: ResNet-18, 32 -> 64 px,
batch 8, 2 epochs, 48 train and 20 val images, on the CPU) with one and with two
decoding threads, alternated in one process after a first untimed run, so that the
imports are paid before the clock starts and each timed run compiles its loaders
afresh, as every run of the test suite does.

    .venv/bin/python benchmarks/tiny_run_threads.py [ROUNDS]   # default 3

Prints each run's seconds and, per thread count, the median. Most of such a run is numba
compiling the loaders' pipelines: the decoder's loop is serial on one thread and a
parallel loop (numba's parfors) on more, which takes longer to compile.
"""
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train_imagenet  # noqa: E402
from ffcv_imagenet.data.folders import list_tree  # noqa: E402
from ffcv_imagenet.data.synthetic import generate  # noqa: E402
from ffcv_imagenet.data.write.writer import write_beton  # noqa: E402
from tests.support import tiny_args  # noqa: E402


def make_betons(out: Path) -> tuple[Path, Path]:
    """The tests' session data: 4 classes, 12 train and 5 val images each, 128 px."""
    root = generate(out / 'synth', classes=4, train_per_class=12, val_per_class=5, seed=3,
                    workers=2)
    train, classes = list_tree(root / 'train')
    val, _ = list_tree(root / 'val', classes)
    write_beton(train, out / 'train.beton', classes, max_resolution=128, num_workers=2)
    write_beton(val, out / 'val.beton', classes, max_resolution=128, num_workers=2)
    return out / 'train.beton', out / 'val.beton'


def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        betons = make_betons(out)
        train_imagenet.main(tiny_args(betons, out / 'warm-up'))
        seconds = {1: [], 2: []}
        for r in range(rounds):
            order = (1, 2) if r % 2 == 0 else (2, 1)
            for threads in order:
                start = time.perf_counter()
                code = train_imagenet.main(tiny_args(betons, out / f'run{r}-{threads}',
                                                     f'--data.num_workers={threads}'))
                took = time.perf_counter() - start
                assert code == 0
                seconds[threads].append(took)
                print(f"round {r}: {threads} decoding thread(s): {took:.2f} s", flush=True)
    for threads, values in seconds.items():
        print(f"{threads} decoding thread(s): median {statistics.median(values):.2f} s "
              f"over {len(values)} runs")
    print(f"two threads / one: {statistics.median(seconds[2]) / statistics.median(seconds[1]):.2f}")


if __name__ == '__main__':
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
