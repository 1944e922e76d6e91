"""The sweep folder: its manifest, and the summary table and plot of its runs.

A sweep folder holds one run folder per variant and:

    sweep.json     the manifest: recipe files, fixed overrides, swept keys, variants
                   (name -> overrides) and each variant's last outcome
    summary.md     one row per variant: overrides, status, best and final val
    summary.csv    top-1/top-5, final train loss, epochs, times and images/sec
    val_top1.png   every variant's val top-1 against epoch

Everything is read from the run folders' ``log.jsonl`` (the last record of each
epoch wins, a half-written line is ignored), so a summary of a sweep that is still
running is correct up to its last finished epoch.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import os
from pathlib import Path
from typing import IO

from matplotlib.figure import Figure

from ..training.checkpoint import checkpoint_dir
from ..training.logs import CONFIG_FILE, LOG_FILE, read_log
from ..training.plots import FIGSIZE, PERCENT, draw_line, epoch_series, finish_axes, \
    replace_atomically, save_png

MANIFEST = 'sweep.json'
LOCK = '.lock'  # held by the sweep that is running in the folder
SUMMARY_MD, SUMMARY_CSV, PLOT = 'summary.md', 'summary.csv', 'val_top1.png'
FINAL = 'final.pt'  # the trainer writes it once all epochs ran, or at an early stop

# summary columns after the variant name and the swept keys: (CSV name, markdown
# header, markdown format); accuracies are fractions in the CSV, percent in markdown
COLUMNS = (
    ('status', 'status', '{}'),
    ('epochs_done', 'epochs', '{}'),
    ('epochs_total', 'of', '{}'),
    ('best_epoch', 'best epoch', '{}'),
    ('best_val_top1', 'best top-1 (%)', '{:.2%}'),
    ('best_val_top5', 'best top-5 (%)', '{:.2%}'),
    ('final_val_top1', 'final top-1 (%)', '{:.2%}'),
    ('final_val_top5', 'final top-5 (%)', '{:.2%}'),
    ('final_train_loss', 'final train loss', '{:.4f}'),
    ('wall_time_s', 'wall time (s)', '{:.1f}'),
    ('train_time_s', 'train time (s)', '{:.1f}'),
    ('images_per_sec', 'train images/s', '{:.1f}'),
)


def write_text(path: Path, text: str) -> Path:
    """Writes ``text`` to ``path`` atomically (a reader sees the old or the new file)."""
    return replace_atomically(path, lambda temp: Path(temp).write_text(text))


def read_manifest(sweep_dir: str | os.PathLike) -> dict:
    """``sweep_dir/sweep.json``; raises ``FileNotFoundError`` naming it when absent."""
    path = Path(sweep_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {sweep_dir}: not a sweep folder")
    return json.loads(path.read_text())


def write_manifest(sweep_dir: str | os.PathLike, manifest: dict) -> Path:
    return write_text(Path(sweep_dir) / MANIFEST, json.dumps(manifest, indent=1) + '\n')


def lock_sweep(sweep_dir: str | os.PathLike) -> IO | None:
    """The open lock file of ``sweep_dir``, locked for this process until it is closed
    or the process ends; None when a running sweep holds the lock."""
    handle = open(Path(sweep_dir) / LOCK, 'w')
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def sweep_running(sweep_dir: str | os.PathLike) -> bool:
    """Whether a sweep is running in ``sweep_dir`` now."""
    handle = lock_sweep(sweep_dir)
    if handle is not None:
        handle.close()
    return handle is None


def run_status(run_dir: Path, outcome: dict | None, live: bool = True) -> str:
    """'finished' (``final.pt`` written), else the sweep's last word on the variant
    ('running', 'interrupted', 'failed (exit N)', 'incomplete': it ended without
    finishing, e.g. with ``training.stop_after``), else 'incomplete' when the run has a
    log and 'pending' when it has none. A 'running' variant of a sweep that is not
    ``live`` (it was killed) is 'interrupted'."""
    if (checkpoint_dir(run_dir) / FINAL).is_file():
        return 'finished'
    state = (outcome or {}).get('status')
    if state == 'failed':
        return f"failed (exit {outcome.get('exit_code')})"
    if state == 'running' and not live:
        return 'interrupted'
    if state in ('running', 'interrupted', 'incomplete'):
        return state
    return 'incomplete' if (run_dir / LOG_FILE).is_file() else 'pending'


def wall_seconds(records: list[dict]) -> float | None:
    """Seconds spent by the run's invocations, each from its start/resume event to its
    last record (the gaps between invocations do not count); None before a start."""
    total, begun, last = 0.0, None, None
    for record in records:
        stamp = record.get('time')
        if not isinstance(stamp, (int, float)):
            continue
        if record.get('event') in ('start', 'resume'):
            if begun is not None:
                total += last - begun
            begun = stamp
        last = stamp
    return None if begun is None else total + last - begun


def _planned_epochs(run_dir: Path) -> int | None:
    try:
        return json.loads((run_dir / CONFIG_FILE).read_text()).get('training.epochs')
    except (OSError, ValueError):
        return None


def run_metrics(run_dir: str | os.PathLike) -> dict:
    """The summary numbers of one run folder: epochs done and planned, the epoch of the
    best val top-1, best (highest over epochs, each on its own) and final (last
    validated epoch) val top-1/top-5 as fractions, the last epoch's train loss, wall
    and training time in seconds, and training images/sec (total images over total
    training seconds). A value the log does not have yet is None."""
    run_dir = Path(run_dir)
    records = read_log(run_dir)
    series = epoch_series(records)
    epochs = series['epoch']
    val = [(epoch, top1, top5) for epoch, top1, top5
           in zip(epochs, series['val_top1'], series['val_top5']) if top1 is not None]
    best = max(val, key=lambda row: row[1], default=(None, None, None))
    timed = [(rate, seconds) for rate, seconds
             in zip(series.get('images_per_sec', []), series.get('epoch_time', []))
             if rate is not None and seconds is not None]
    train_seconds = sum(seconds for _, seconds in timed)
    return {
        'epochs_done': epochs[-1] if epochs else 0,
        'epochs_total': _planned_epochs(run_dir),
        'best_epoch': best[0], 'best_val_top1': best[1],
        'best_val_top5': max((row[2] for row in val if row[2] is not None), default=None),
        'final_val_top1': val[-1][1] if val else None,
        'final_val_top5': val[-1][2] if val else None,
        'final_train_loss': series['train_loss'][-1] if epochs else None,
        'wall_time_s': wall_seconds(records),
        'train_time_s': train_seconds if timed else None,
        'images_per_sec': (sum(rate * seconds for rate, seconds in timed) / train_seconds
                           if train_seconds > 0 else None),
    }


def summary_rows(sweep_dir: str | os.PathLike, manifest: dict) -> list[dict]:
    """One row per variant of ``manifest``, in its order: ``variant``, each swept key
    ('' where the variant keeps the recipe's value), then the ``COLUMNS``."""
    sweep_dir = Path(sweep_dir)
    outcomes, live = manifest.get('outcomes', {}), sweep_running(sweep_dir)
    rows = []
    for name, overrides in manifest['variants'].items():
        run_dir = sweep_dir / name
        swept = {key: overrides.get(key, '') for key in manifest['keys']}
        rows.append({'variant': name, **swept,
                     'status': run_status(run_dir, outcomes.get(name), live),
                     **run_metrics(run_dir)})
    return rows


def format_csv(rows: list[dict], keys: list[str]) -> str:
    """CSV text: the log's values unrounded (accuracies as fractions), '' for none."""
    out = io.StringIO()
    writer = csv.DictWriter(out, ['variant', *keys, *(name for name, _, _ in COLUMNS)],
                            lineterminator='\n')
    writer.writeheader()
    writer.writerows({key: '' if value is None else value for key, value in row.items()}
                     for row in rows)
    return out.getvalue()


def format_markdown(rows: list[dict], keys: list[str], title: str = '') -> str:
    """A markdown table (accuracies in percent, '-' for values not logged yet)."""
    headers = ['variant', *keys, *(header for _, header, _ in COLUMNS)]
    lines = [f"{title}\n"] if title else []
    lines += ['| ' + ' | '.join(headers) + ' |', '|' + '---|' * len(headers)]
    for row in rows:
        cells = [row['variant'], *(str(row[key]) for key in keys)]
        cells += ['-' if row[name] is None else form.format(row[name]).rstrip('%')
                  for name, _, form in COLUMNS]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def sweep_figure(series: dict[str, dict[str, list]]) -> Figure:
    """Every run's val top-1 (percent) against epoch, one line per variant named in the
    legend; ``series``: variant name -> its ``epoch_series``. A variant without a
    validated epoch has no line."""
    fig = Figure(figsize=FIGSIZE, layout='constrained')
    ax = fig.add_subplot()
    for index, (name, columns) in enumerate(series.items()):
        points = [(epoch, top1 * PERCENT) for epoch, top1
                  in zip(columns['epoch'], columns['val_top1']) if top1 is not None]
        # ten colours, then the same ten dashed, and so on
        draw_line(ax, points, name, color=f'C{index % 10}',
                  linestyle=('-', '--', ':', '-.')[index // 10 % 4])
    finish_axes(ax, 'Validation top-1 per variant', 'val top-1 (%)', percent=True,
                fontsize='small')
    return fig


def summarise(sweep_dir: str | os.PathLike) -> list[Path]:
    """Writes ``summary.md``, ``summary.csv`` and ``val_top1.png`` into ``sweep_dir``
    from its manifest and run folders; returns their paths."""
    sweep_dir = Path(sweep_dir)
    manifest = read_manifest(sweep_dir)
    rows = summary_rows(sweep_dir, manifest)
    keys = manifest['keys']
    fixed = ' '.join(f'{key}={value}' for key, value in manifest.get('fixed', {}).items())
    title = (f"Sweep of {', '.join(manifest.get('configs', [])) or 'the defaults'}"
             + (f" with {fixed}" if fixed else '') + '; accuracies in %, times in seconds.')
    return [write_text(sweep_dir / SUMMARY_MD, format_markdown(rows, keys, title)),
            write_text(sweep_dir / SUMMARY_CSV, format_csv(rows, keys)),
            save_png(sweep_figure({name: epoch_series(read_log(sweep_dir / name))
                                   for name in manifest['variants']}), sweep_dir / PLOT)]
