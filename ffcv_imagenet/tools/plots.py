"""PNG plots of a run's per-epoch log (see :mod:`ffcv_imagenet.training.plots`).

    python -m ffcv_imagenet plots RUN_DIR [--out DIR]

writes ``loss.png``, ``accuracy.png``, ``lr.png`` and ``resolution.png`` into
``DIR`` (default ``RUN_DIR/plots``) and prints their paths.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..training.plots import load_series, write_plots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('run_dir', metavar='RUN_DIR', help='a run folder with log.jsonl')
    parser.add_argument('--out', metavar='DIR', help='output folder (default RUN_DIR/plots)')
    args = parser.parse_args(argv)
    try:
        series = load_series(args.run_dir)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir)
    out = run_dir / 'plots' if args.out is None else args.out
    for path in write_plots(series, out, run_dir.resolve().name):
        print(path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
