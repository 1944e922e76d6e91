"""What a run continues from: the checkpoint to resume (agreed by every rank), whether
this run may continue its state, and the config's settings over what it restored.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..training.checkpoint import CheckpointError, check_compatible, checkpoint_dir, \
    find_latest
from ..training.distributed import Dist, broadcast_object
from ..training.schedules import Stages
from .config import ConfigError

if TYPE_CHECKING:
    from .recipe import Schedules

# settings that change what a checkpoint's state holds -> the value of checkpoints
# written before the setting existed
STATE_SHAPING = {'optimizer.name': 'sgd', 'model.head': 'fc', 'optimizer.decay_rule': 'types'}


def resume_source(config, run_dir: Path) -> tuple[Path | None, str]:
    """(checkpoint to load or None, a note for the user).
    Raises:
        CheckpointError: ``resume=auto`` finds only unreadable checkpoints.
    """
    resume = config['checkpoint.resume']
    if resume == 'auto':
        latest, skipped = find_latest(run_dir)
        if latest is None and config['training.eval_only']:
            raise ConfigError(f"training.eval_only=1: no checkpoint in "
                              f"{checkpoint_dir(run_dir)} to evaluate")
        if latest is None:
            return None, f"no checkpoint in {checkpoint_dir(run_dir)}; starting fresh"
        return latest, '\n'.join([*skipped, f"resuming from {latest}"])
    if resume:
        return Path(resume), f"resuming from {resume}"
    if config['training.eval_only']:
        raise ConfigError("training.eval_only=1 needs --checkpoint.resume=PATH or auto")
    if any(checkpoint_dir(run_dir).glob('*.pt')):
        raise ConfigError(f"{checkpoint_dir(run_dir)} already holds checkpoints; pass "
                          f"--checkpoint.resume=auto to continue, or choose another "
                          f"--logging.folder")
    return None, f"new run in {run_dir}"


def agreed_resume_source(config, run_dir: Path, dist: Dist) -> tuple[Path | None, str]:
    """Rank 0 decides what to resume from and tells the others, so that ranks on
    other nodes cannot disagree (or fail alone) over what their disks hold; the
    run folder must therefore be on a file system every node can read."""
    decision = None
    if dist.is_main:
        try:
            decision = (*resume_source(config, run_dir), None, None)
        except (ConfigError, CheckpointError) as err:
            decision = (None, '', type(err).__name__, str(err))
    source, note, kind, error = broadcast_object(decision)
    if error:
        raise (CheckpointError if kind == 'CheckpointError' else ConfigError)(error)
    return (Path(source) if source else None), note


def check_can_continue(saved: dict, source: Path, config, classes: list[str],
                       schedules: 'Schedules', world_size: int) -> list[str]:
    """Notes about continuing ``saved`` (read from ``source``) with this config.
    Raises:
        CheckpointError: another architecture or class list.
        ConfigError: a setting of :data:`STATE_SHAPING` or the global batch differs.
    """
    check_compatible(saved, source, arch=config['model.arch'], classes=classes)
    for key, before in STATE_SHAPING.items():
        trained_with = (saved.get('config') or {}).get(key, before)
        if trained_with != config[key]:
            raise ConfigError(f"{key}: {source} was trained with {trained_with}; its "
                              f"state cannot continue as {config[key]}")
    return _check_same_global_batch(saved, source, schedules, world_size)


def _check_same_global_batch(saved: dict, source: Path, schedules: 'Schedules',
                             world_size: int) -> list[str]:
    """Notes about continuing ``saved`` here. The rule for another number of processes:
    the global batch must stay the same (each process then takes a different share of
    it); the learning rate, the schedule's position (optimizer steps) and the samples
    of every step stay as they were, because each step takes the same stretch of the
    epoch's permutation whatever the number of processes. With stages, the batch is
    the one of the epoch the checkpoint continues with, and the steps taken so far
    must be those of this run's stages.
    Raises:
        ConfigError: the global batch (per-process batch x processes) differs.
    """
    epoch = saved['epoch']
    old_world, old_batch = saved.get('world_size'), saved.get('batch')  # None: older files
    old_stages = (saved.get('config') or {}).get('resolution.stages', '')
    if old_stages and old_batch:
        old_batch = Stages.parse(old_stages, epoch + 1).at(epoch).batch
    old_global = (old_batch * old_world) if old_batch and old_world else None
    batch = schedules.batch_at(epoch)
    here = batch * world_size
    if saved['iteration'] != schedules.first_iteration(epoch) + int(saved.get('step', 0)) \
            or (old_global is not None and old_global != here):
        was = (f"{old_world} x {old_batch} = {old_global}" if old_global else
               f"{saved['iteration']} steps in {epoch} epochs")
        keep = f"={old_global}" if old_global else ""
        raise ConfigError(
            f"training.batch_size: {source} was trained with a global batch of {was} "
            f"(processes x batch), but this run has {world_size} x {batch} = {here}; keep "
            f"the global batch (--training.global_batch_size{keep}, or the same "
            f"resolution.stages) to continue")
    if old_world is not None and old_world != world_size:
        return [f"resuming on {world_size} process(es) where {source} ran on {old_world}: "
                f"the global batch {here} is kept ({batch} per process); batch-norm "
                f"statistics and augmentations differ from an unbroken run"]
    return []


def apply_optimizer_config(optimizer: torch.optim.Optimizer, config,
                            device: torch.device) -> None:
    """The config's optimizer settings over a restored optimizer's (each optimizer
    keeps only the keys it knows)."""
    values = {'momentum': config['optimizer.momentum'],
              'nesterov': bool(config['optimizer.nesterov']),
              'betas': (config['optimizer.beta1'], config['optimizer.beta2']),
              'eps': config['optimizer.eps'],
              'trust_coefficient': config['optimizer.trust_coefficient'],
              'fused': True if device.type == 'cuda' else None}  # where it now runs
    for group in optimizer.param_groups:
        group.update({key: value for key, value in values.items() if key in group})
        if group.get('name') == 'decay':
            group['weight_decay'] = config['optimizer.weight_decay']
