"""PNG plots of a run's per-epoch log: loss, accuracy, learning rate and training
resolution against epoch (``loss.png``, ``accuracy.png``, ``lr.png``,
``resolution.png``). Works on a run that is still writing its log; the training
command writes them at the end of a run, ``python -m ffcv_imagenet plots`` on demand.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .logs import LOG_FILE, read_log

PLOTS = ('loss', 'accuracy', 'lr', 'resolution')

# (log key, legend label, line style) per plot; EMA lines are dashed, top-5 dotted
LINES = {
    'loss': (('train_loss', 'train', {'color': 'C0'}),
             ('val_loss', 'val', {'color': 'C1'}),
             ('ema_val_loss', 'EMA val', {'color': 'C2', 'linestyle': '--'})),
    'accuracy': (('train_top1', 'train top-1', {'color': 'C0'}),
                 ('val_top1', 'val top-1', {'color': 'C1'}),
                 ('val_top5', 'val top-5', {'color': 'C1', 'linestyle': ':'}),
                 ('ema_val_top1', 'EMA val top-1', {'color': 'C2', 'linestyle': '--'}),
                 ('ema_val_top5', 'EMA val top-5', {'color': 'C2', 'linestyle': ':'})),
    'lr': (('lr', 'learning rate', {'color': 'C0'}),),
    'resolution': (('resolution', 'training resolution', {'color': 'C0'}),),
}
# (title, y-axis label) per plot
AXES = {
    'loss': ('Loss', 'loss (cross-entropy)'),
    'accuracy': ('Accuracy', 'accuracy (%)'),
    'lr': ('Learning rate', 'learning rate (end of epoch)'),
    'resolution': ('Training resolution', 'resolution (pixels)'),
}
PERCENT = 100.0  # the log holds accuracies as fractions; the plot shows percent
MARKERS_UP_TO = 40  # points per line; beyond this markers only clutter
FIGSIZE = (6.4, 4.0)  # inches
DPI = 120


def epoch_series(records: list[dict]) -> dict[str, list]:
    """Per-key columns of the ``epoch`` records, one entry per epoch sorted by epoch.

    A resumed run can log an epoch twice (a crash between log and checkpoint): the
    last record wins. Keys a record lacks are ``None``; every plotted key is present.
    """
    last = {}
    for record in records:
        if record.get('event') == 'epoch' and isinstance(record.get('epoch'), int):
            last[record['epoch']] = record
    keys = ['epoch'] + [key for lines in LINES.values() for key, _, _ in lines]
    for record in last.values():
        keys += [key for key in record if key not in keys and key != 'event']
    ordered = [last[epoch] for epoch in sorted(last)]
    return {key: [record.get(key) for record in ordered] for key in keys}


def load_series(run_dir: str | os.PathLike) -> dict[str, list]:
    """``epoch_series`` of ``run_dir/log.jsonl``; raises ``FileNotFoundError`` without
    a log and ``ValueError`` when it has no epoch records yet."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {LOG_FILE} in {run_dir}")
    series = epoch_series(read_log(run_dir, 'epoch'))
    if not series['epoch']:
        raise ValueError(f"{path}: no epoch records yet")
    return series


def _label(key: str, label: str, series: dict[str, list]) -> str:
    # with MixUp/CutMix, train top-1 is scored against one label of each mixed pair
    mixed = [text for text in series.get('train_top1_label', []) if text]
    return f"{label} (vs {mixed[-1]})" if key == 'train_top1' and mixed else label


def draw_line(ax, points: list[tuple[float, float]], label: str, **style) -> None:
    """One line of (epoch, value) points; markers only while they do not clutter."""
    if points:
        xs, ys = zip(*points)
        ax.plot(xs, ys, label=label, linewidth=1.5,
                marker='o' if len(points) <= MARKERS_UP_TO else None, markersize=3, **style)


def finish_axes(ax, title: str, ylabel: str, percent: bool = False, **legend) -> None:
    """Title, labels, whole-epoch ticks, a grid and a legend (``legend``: its keyword
    arguments), or 'no data yet' where no line was drawn; ``percent`` fixes the
    y-axis at 0-100."""
    if percent:
        ax.set_ylim(0, PERCENT)
    ax.set_title(title)
    ax.set_xlabel('epoch')
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if ax.get_lines():
        ax.legend(**{'loc': 'best', **legend})
    else:  # a fresh run may not have logged this value yet
        ax.text(0.5, 0.5, 'no data yet', ha='center', va='center', transform=ax.transAxes)


def make_figure(name: str, series: dict[str, list], run_name: str = '') -> Figure:
    """The ``name`` plot (one of ``PLOTS``) of ``epoch_series`` output against epoch;
    epochs without a value are skipped. Accuracies are drawn in percent."""
    title, ylabel = AXES[name]
    fig = Figure(figsize=FIGSIZE, layout='constrained')
    ax = fig.add_subplot()
    scale = PERCENT if name == 'accuracy' else 1.0
    for key, label, style in LINES[name]:
        points = [(epoch, value * scale) for epoch, value
                  in zip(series['epoch'], series.get(key, [])) if value is not None]
        draw_line(ax, points, _label(key, label, series), **style)
    finish_axes(ax, f"{title} — {run_name}" if run_name else title, ylabel,
                percent=name == 'accuracy')
    return fig


def replace_atomically(path: Path, write: Callable[[str], None]) -> Path:
    """Calls ``write(temporary path)`` on a temporary file in ``path``'s folder, then
    renames it over ``path``, so a reader (a browser, a sync job, a spreadsheet) never
    sees a half-written file; a failed ``write`` leaves nothing behind."""
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.stem}.', suffix='.tmp')
    os.close(handle)
    try:
        write(temp)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    return path


def save_png(fig: Figure, path: Path, dpi: int = DPI) -> Path:
    """Writes ``fig`` to ``path`` atomically (see :func:`replace_atomically`)."""
    return replace_atomically(path, lambda temp: fig.savefig(temp, format='png', dpi=dpi))


def write_plots(series: dict[str, list], out_dir: str | os.PathLike,
                run_name: str = '') -> list[Path]:
    """Writes ``<name>.png`` for each of ``PLOTS`` into ``out_dir`` (created)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [save_png(make_figure(name, series, run_name), out / f'{name}.png')
            for name in PLOTS]


def plot_run(run_dir: str | os.PathLike,
             out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Plots ``run_dir/log.jsonl`` into ``out_dir`` (default ``run_dir/plots``) and
    returns the written PNG paths, in ``PLOTS`` order."""
    run_dir = Path(run_dir)
    series = load_series(run_dir)
    return write_plots(series, run_dir / 'plots' if out_dir is None else out_dir,
                       run_dir.resolve().name)
