"""Checkpoints: atomic save, checked load, and finding the newest one to resume.

A checkpoint is a ``torch.save``d dict (loadable with ``weights_only=True``):

    format      FORMAT, to refuse files this code did not write
    arch, num_classes, classes   classes: wnids in label order
    names       human-readable class names, one per class (absent in older files)
    model       plain torchvision-style state_dict (no DDP/compile prefixes)
    optimizer, scaler            state_dicts (scaler: None without fp16)
    epoch       epochs completed; iteration: optimizer steps taken
    step        batches of epoch ``epoch`` (0-based) already trained: 0 at an epoch
                boundary; partial: that epoch's running sums (loss sum, correct,
                images, seconds) over all ranks, or None
    best_top1   best validation top-1 so far (fraction), metrics: the last ones
    config      the full resolved config (flat dict)
    rng         rank 0's torch / CUDA / numpy / python RNG states

The learning-rate schedule is a pure function of ``iteration``, so ``iteration`` is
the schedule position. :class:`TrainState` is the progress a checkpoint carries;
:func:`checkpoint_state` and :func:`restore` turn a run into that dict and back.
Files live in ``<run_dir>/checkpoints/``: ``last.pt`` (every epoch, or every N
minutes, or where a stop signal stopped the run), ``best.pt``, ``epoch_NNNN.pt``
(every K epochs) and ``final.pt``. Every file is written to a temporary name and
renamed, so a ``kill -9`` at any moment, or a full disk, leaves the previous file; the
names due after one epoch are hard links of one file.
"""
from __future__ import annotations

import errno
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import torch
from torch import nn

from ..data.messages import error_line

FORMAT = 'ffcv_imagenet-checkpoint-1'
SUBDIR = 'checkpoints'


# what os.link raises where a filesystem has no hard links (or no more for the file)
_NO_HARD_LINKS = {errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK}


class CheckpointError(ValueError):
    """A missing, unreadable or incompatible checkpoint; the message names the file."""


class _NoHardLinks(Exception):
    """The filesystem refused a hard link (see ``_NO_HARD_LINKS``)."""


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / SUBDIR


def _write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Calls ``write(handle)`` on a temporary file beside ``path``, flushes it to disk
    and renames it over ``path``: a crash at any moment leaves either the previous
    file or the new one, never a torn one."""
    def make(temporary: Path) -> None:
        with open(temporary, 'wb') as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
    return _replace_atomically(path, make)


def _replace_atomically(path: str | os.PathLike, make: Callable[[Path], None]) -> Path:
    """Calls ``make(temporary)`` to create the file under a temporary name beside
    ``path``, then renames it over ``path`` and makes the rename durable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _fresh_temporary(path)
    try:
        make(temporary)
        os.replace(temporary, path)
    except OSError as err:  # ENOSPC, EDQUOT, EIO: one line, and the old file stays
        kept = f"; the previous {path.name} is intact" if path.exists() else ""
        raise CheckpointError(f"cannot write checkpoint {path}: "
                              f"{err.strerror or err}{kept}") from None
    finally:
        temporary.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:  # makes the rename itself durable
        os.fsync(directory)
    finally:
        os.close(directory)
    return path


def _fresh_temporary(path: Path) -> Path:
    """This process's temporary name for ``path``, after removing those a killed
    process left (a leftover link would keep a whole old checkpoint on disk)."""
    for stale in path.parent.glob(f'.{path.name}.*.tmp'):
        stale.unlink(missing_ok=True)
    return path.with_name(f'.{path.name}.{os.getpid()}.tmp')


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Writes ``state`` to ``path`` atomically (see :func:`_write_atomically`)."""
    return _write_atomically(path, lambda handle: torch.save({**state, 'format': FORMAT},
                                                             handle))


def copy_checkpoint(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Copies a checkpoint file to ``path`` atomically (cheaper than saving again)."""
    def copy(handle: BinaryIO) -> None:
        with open(source, 'rb') as original:
            shutil.copyfileobj(original, handle, 16 * 2 ** 20)
    return _write_atomically(path, copy)


def link_checkpoint(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Gives the checkpoint file ``source`` the second name ``path`` (same folder),
    atomically: a hard link, so that the ``last.pt``, ``best.pt`` and ``final.pt`` of one
    epoch take the disk space of one file. Safe because no file here is ever edited in
    place: writing a name again renames a new file over it, and the other names keep
    the old one. Where the filesystem has no hard links, a copy."""
    path = Path(path)

    def make(temporary: Path) -> None:
        try:
            os.link(source, temporary)
        except OSError as err:
            if err.errno in _NO_HARD_LINKS:
                raise _NoHardLinks from None
            raise CheckpointError(f"cannot link checkpoint {source} as {path.name}: "
                                  f"{err.strerror or err}") from None
    try:
        return _replace_atomically(path, make)
    except _NoHardLinks:
        return copy_checkpoint(source, path)


def load_checkpoint(path: str | os.PathLike, map_location='cpu', mmap: bool = False) -> dict:
    """Reads a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: the file is missing, unreadable or not such a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises many types for a damaged file
        raise CheckpointError(f"cannot read checkpoint {path}: {error_line(err)}") from None
    if not isinstance(state, dict) or state.get('format') != FORMAT:
        raise CheckpointError(f"{path} is not an ffcv_imagenet checkpoint")
    return state


def check_compatible(state: dict, path: str | os.PathLike, *, arch: str,
                     classes: list[str]) -> None:
    """Raises CheckpointError unless the checkpoint has this architecture and class list."""
    if state['arch'] != arch or state['num_classes'] != len(classes):
        raise CheckpointError(
            f"{path} holds {state['arch']} with {state['num_classes']} classes, but this run "
            f"builds {arch} with {len(classes)} classes")
    if list(state['classes']) != list(classes):
        raise CheckpointError(f"{path} was trained on a different class list than this "
                              f"run's .beton files")


def find_latest(run_dir: str | os.PathLike) -> tuple[Path | None, list[str]]:
    """(the checkpoint in ``run_dir`` that is furthest along (most optimizer steps),
    one line per unreadable file that was skipped). The path is None when there is
    no checkpoint at all.
    Raises:
        CheckpointError: there are checkpoints, but none can be read (training over
            them would lose the run).
    """
    best, best_key, skipped = None, None, []
    for path in sorted(checkpoint_dir(run_dir).glob('*.pt')):
        try:
            state = load_checkpoint(path, mmap=True)
        except CheckpointError as err:
            skipped.append(f"skipping {err}")
            continue
        # 'final' and 'last' win ties with an 'epoch_N' copy of the same step
        key = (state['iteration'], path.stem in ('final', 'last'))
        if best_key is None or key > best_key:
            best, best_key = path, key
    if best is None and skipped:
        raise CheckpointError(f"no readable checkpoint in {checkpoint_dir(run_dir)} "
                              f"({len(skipped)} unreadable: {skipped[0][9:]}); move them "
                              f"away to start afresh")
    return best, skipped


@dataclass
class TrainState:
    """Progress that a checkpoint must carry, so that a resumed run continues exactly."""
    # epochs completed
    epoch: int = 0
    # optimizer steps taken
    iteration: int = 0
    # the best value of the best metric so far (a top-1 fraction; -1: none yet)
    best_top1: float = -1.0
    # the latest epoch's metrics
    metrics: dict = field(default_factory=dict)
    # the epoch (1-based) of ``best_top1``
    best_epoch: int = 0
    # early stopping ended the run
    stopped_early: bool = False
    # inside an epoch: the batches of epoch ``epoch`` already trained (0: at its start)
    step: int = 0
    # inside an epoch: its running sums over all ranks (loss sum, correct, images,
    # seconds)
    partial: list[float] | None = None


def checkpoint_state(model: nn.Module, optimizer, scaler, state: TrainState,
                     meta: dict, ema=None) -> dict:
    """The dict :func:`save_checkpoint` writes; ``meta`` holds arch, num_classes,
    classes and config; ``ema`` is a :class:`~ffcv_imagenet.training.ema.ModelEMA` or
    None. ``model`` must be the unwrapped module; the EMA
    weights, when kept, are under ``ema``/``module`` with the same keys."""
    return {**meta, 'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
            'scaler': scaler.state_dict() if scaler.is_enabled() else None,
            'ema': ema.state_dict() if ema is not None else None,
            'epoch': state.epoch, 'iteration': state.iteration,
            'best_top1': state.best_top1, 'best_epoch': state.best_epoch,
            'stopped_early': state.stopped_early, 'metrics': state.metrics,
            'step': state.step, 'partial': state.partial, 'rng': rng_state()}


def restore(saved: dict, model: nn.Module, optimizer, scaler,
            ema=None) -> TrainState:
    """Loads a checkpoint dict into model (unwrapped), optimizer, scaler and EMA (an
    EMA missing from the checkpoint starts from the loaded weights); returns the
    progress to continue from."""
    model.load_state_dict(saved['model'])
    optimizer.load_state_dict(saved['optimizer'])
    if saved.get('scaler') and scaler.is_enabled():
        scaler.load_state_dict(saved['scaler'])
    if ema is not None:
        ema.load_state_dict(saved.get('ema') or {'module': saved['model']})
    set_rng_state(saved['rng'])
    return TrainState(saved['epoch'], saved['iteration'], saved['best_top1'],
                      dict(saved.get('metrics') or {}),
                      saved.get('best_epoch', saved['epoch']),  # older checkpoints
                      bool(saved.get('stopped_early', False)), int(saved.get('step', 0)),
                      saved.get('partial'))


def checkpoint_names(epoch: int, *, improved: bool, keep_every: int, last_due: bool,
                     finished: bool) -> list[str]:
    """The file names due after ``epoch`` (1-based): ``last.pt`` when ``last_due``,
    ``best.pt`` when ``improved``, ``epoch_NNNN.pt`` every ``keep_every`` epochs
    (0 = never) and ``final.pt`` when ``finished`` (which implies ``last.pt``)."""
    names = ['last.pt'] if last_due or finished else []
    if improved:
        names.append('best.pt')
    if keep_every and epoch % keep_every == 0:
        names.append(f'epoch_{epoch:04d}.pt')
    if finished:
        names.append('final.pt')
    return names


def save_checkpoints(folder: str | os.PathLike, saved: dict, names: list[str]) -> list[Path]:
    """Saves ``saved`` once, as the first of ``names`` in ``folder``, and links the
    others to that file (:func:`link_checkpoint`); all atomically."""
    folder = Path(folder)
    first = save_checkpoint(saved, folder / names[0])
    return [first] + [link_checkpoint(first, folder / name) for name in names[1:]]


def rng_state() -> dict:
    """This process's RNG states (CUDA: the current device's only, so that a machine
    with fewer GPUs can restore it), in a form ``weights_only`` loading accepts."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            'numpy': [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
            'python': random.getstate()}


def set_rng_state(state: dict) -> None:
    """Restores what :func:`rng_state` returned."""
    torch.set_rng_state(state['torch'])
    if state['cuda'] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])
    kind, keys, position, has_gauss, gauss = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = state['python']
    random.setstate((version, tuple(internal), gauss_next))
