"""What a run leaves behind for people: a config file, a JSON-lines log, TensorBoard
scalars and a progress bar. Only rank 0 writes; other ranks get a silent logger.

Files in the run folder:
    config.json   the resolved config (flat ``{"section.key": value}``)
    log.jsonl     one JSON object per line: ``{"event": "epoch", "epoch": ...}`` per
                  epoch, plus start/resume/eval/stop events; appended on resume
    tb/           TensorBoard event files (``tensorboard=True`` only)
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

LOG_FILE = 'log.jsonl'
CONFIG_FILE = 'config.json'


def format_record(record: dict) -> str:
    """One human-readable line: ``key=value`` pairs, floats to 4 significant digits."""
    return ' '.join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                    for key, value in record.items() if value is not None)


def _plain(value):
    """JSON-safe value: non-finite floats become null (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunLog:
    """Writes a run's config, events and scalars (all no-ops when ``enabled`` is False).

    Args:
        run_dir: the run folder (created).
        enabled: True on rank 0 only.
        tensorboard: also write TensorBoard scalars under ``run_dir/tb``.
        echo: also print each record (but its time) as one line.
    """

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True,
                 tensorboard: bool = False, echo: bool = True):
        self.run_dir, self.enabled, self.echo = Path(run_dir), enabled, echo
        self._tb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise RuntimeError("logging.tensorboard=1 needs the tensorboard package "
                                   "(pip install tensorboard)") from None
            self._tb = SummaryWriter(str(self.run_dir / 'tb'))

    def write_config(self, config: dict) -> None:
        """Saves the resolved config as ``config.json`` (replacing an older one)."""
        if self.enabled:
            path = self.run_dir / CONFIG_FILE
            path.write_text(json.dumps(config, indent=1, sort_keys=True) + '\n')

    def event(self, name: str, **fields) -> dict:
        """Appends ``{"event": name, "time": unix seconds, **fields}`` to the log."""
        record = {'event': name, 'time': round(time.time(), 3),
                  **{key: _plain(value) for key, value in fields.items()}}
        if self.enabled:
            with open(self.run_dir / LOG_FILE, 'a') as handle:
                handle.write(json.dumps(record) + '\n')
            if self.echo:
                shown = {k: v for k, v in record.items() if k not in ('event', 'time')}
                tqdm.write(f"{name}: {format_record(shown)}", file=sys.stdout)
        return record

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        """TensorBoard scalars at ``step`` (epochs); ``None`` values are skipped."""
        if self._tb is not None:
            for key, value in values.items():
                if value is not None:
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_log(run_dir: str | os.PathLike, event: str | None = None) -> list[dict]:
    """The records of ``run_dir/log.jsonl`` (only those of ``event`` when given); a
    half-written last line (a run still writing) is ignored."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event is None or record.get('event') == event:
            records.append(record)
    return records


class Progress:
    """A tqdm bar over ``iterable`` on rank 0; a plain pass-through elsewhere."""

    def __init__(self, iterable: Iterable, total: int, enabled: bool, desc: str):
        self._bar = tqdm(iterable, total=total, desc=desc, dynamic_ncols=True,
                         leave=False, disable=not enabled, mininterval=1.0)

    def __iter__(self) -> Iterator:
        return iter(self._bar)

    def show(self, **values) -> None:
        """Sets the bar's postfix, e.g. ``show(loss=2.3, lr=0.1)``."""
        self._bar.set_postfix({k: (f'{v:.4g}' if isinstance(v, float) else v)
                               for k, v in values.items()}, refresh=False)

    def close(self) -> None:
        self._bar.close()
