"""The arithmetic of ``bench trainer``, numbers in and numbers out: the parts of a
measured run's time, read from its ``log.jsonl`` records (:func:`measured_parts`),
and the time of a whole recipe projected from them (:func:`project`).

The parts (seconds; the rows of the breakdown, which add up to the run's wall time
from its launch to its last epoch line, less the moments between an epoch's log line
and the next epoch's start):

- start-up: from the launch of the process to its first step: imports, building the
  run, and the wait for the first batch (the loader's start and numba's compilation);
- compilation per input shape: ``compile_s`` of the epochs (see
  :mod:`ffcv_imagenet.training.timing`);
- training steps: each epoch's wall time less its loader waits, compilation,
  validation and checkpoint writes;
- loader waits: ``data_wait_s`` less the first batch's wait, counted in start-up;
- validation and checkpoint writes: ``val_s`` and ``checkpoint_s``.

The resolution switch, the extra time of the first epoch at a new resolution (its
compilation plus the excess of its first batch's wait over the epoch before's), is
shown beside them: it is part of the compilation and loader-wait rows.
"""
from __future__ import annotations

import math

from ...training.loop import FitOptions, validation_due

ASSUMPTIONS = (
    'perfect scaling: N GPUs train and validate N times as many images per second as '
    'one GPU of the measured run',
    'a resolution the measured run did not train at runs at the rate of the nearest '
    'measured one times (measured pixels / its pixels)',
    'a shape not compiled in the measured run compiles in the mean measured time',
    'checkpoints: last.pt as checkpoint.last_every sets it, epoch_NNNN.pt as '
    'checkpoint.every sets it, and final.pt; best.pt only where it falls on one of '
    'those epochs (its other writes depend on the accuracy)',
    'validation passes after the first run at the fastest measured pass',
)


def _epoch_parts(record: dict) -> dict:
    """One epoch's record -> its parts (seconds) and images (all ranks)."""
    steps = (record['epoch_wall_s'] - record['data_wait_s'] - record['compile_s']
             - record['val_s'] - record['checkpoint_s'])
    return {'epoch': record['epoch'], 'resolution': record['resolution'],
            'batch_size': record.get('batch_size'),
            'images': round(record['images_per_sec'] * record['epoch_time']),
            'steps_s': steps, 'data_wait_s': record['data_wait_s'],
            'first_wait_s': record['first_wait_s'], 'compile_s': record['compile_s'],
            'val_s': record['val_s'], 'validated': record.get('val_top1') is not None,
            'checkpoint_s': record['checkpoint_s'], 'epoch_wall_s': record['epoch_wall_s'],
            'ended_at': record['time']}


def measured_parts(records: list[dict], launched_at: float, *, world_size: int,
                   val_images: int) -> dict:
    """The parts of a fresh run's time from its ``epoch`` records (in order, as
    :func:`~ffcv_imagenet.training.logs.read_log` returns them). ``launched_at``: unix
    time (seconds) of the process's launch; ``world_size``: processes (GPUs) that
    trained; ``val_images``: images of one validation pass (all ranks).

    Returns seconds: ``startup_s``, ``compile`` (a list of {resolution (pixels),
    batch_size, seconds}), ``steps_s``, ``data_wait_s``, ``val_s``, ``checkpoint_s``,
    ``total_s`` (their sum), ``wall_s`` (launch to the last epoch's line),
    ``switch_s``; rates: ``train`` (per resolution: ``resolution``, ``images`` and
    ``seconds`` trained, ``images_per_sec_per_gpu``, loader waits included, start-up
    and compilation not),
    ``val_images_per_sec_per_gpu`` (the fastest pass), ``val_warmup_s`` (the first
    pass's excess over it), ``checkpoint_s_per_write``; and ``epochs`` (per epoch).
    Raises:
        ValueError: no epoch records, or records without the timing fields.
    """
    if not records:
        raise ValueError("the run logged no epoch")
    missing = {'data_wait_s', 'epoch_wall_s'} - records[0].keys()
    if missing:
        raise ValueError(f"the run's epoch records lack {', '.join(sorted(missing))}: "
                         f"written by an older trainer")
    epochs = [_epoch_parts(record) for record in records]
    first = epochs[0]
    startup = first['ended_at'] - first['epoch_wall_s'] - launched_at + first['first_wait_s']
    compiled: dict[tuple, float] = {}
    for epoch in epochs:
        if epoch['compile_s'] > 0:
            key = (epoch['resolution'], epoch['batch_size'])
            compiled[key] = compiled.get(key, 0.0) + epoch['compile_s']
    switch = sum(now['compile_s'] + max(0.0, now['first_wait_s'] - before['first_wait_s'])
                 for before, now in zip(epochs, epochs[1:])
                 if now['resolution'] != before['resolution'])
    train_seconds: dict[int, float] = {}
    train_images: dict[int, int] = {}
    for index, epoch in enumerate(epochs):
        seconds = epoch['steps_s'] + epoch['data_wait_s'] - (
            epoch['first_wait_s'] if index == 0 else 0.0)
        res = epoch['resolution']
        train_seconds[res] = train_seconds.get(res, 0.0) + seconds
        train_images[res] = train_images.get(res, 0) + epoch['images']
    passes = [epoch['val_s'] for epoch in epochs if epoch['validated']]
    writes = [epoch['checkpoint_s'] for epoch in epochs if epoch['checkpoint_s'] > 0]
    parts = {
        'startup_s': startup,
        'compile': [{'resolution': res, 'batch_size': batch, 'seconds': seconds}
                    for (res, batch), seconds in compiled.items()],
        'steps_s': sum(epoch['steps_s'] for epoch in epochs),
        'data_wait_s': sum(epoch['data_wait_s'] for epoch in epochs) - first['first_wait_s'],
        'val_s': sum(passes),
        'checkpoint_s': sum(writes),
    }
    parts['total_s'] = (parts['startup_s'] + sum(c['seconds'] for c in parts['compile'])
                        + parts['steps_s'] + parts['data_wait_s'] + parts['val_s']
                        + parts['checkpoint_s'])
    parts.update(
        wall_s=epochs[-1]['ended_at'] - launched_at, switch_s=switch,
        train=[{'resolution': res, 'images': train_images[res], 'seconds': train_seconds[res],
                'images_per_sec_per_gpu': train_images[res] / train_seconds[res] / world_size}
               for res in sorted(train_seconds)],
        val_images_per_sec_per_gpu=(val_images / min(passes) / world_size) if passes else None,
        val_warmup_s=passes[0] - min(passes) if passes else 0.0,
        checkpoint_s_per_write=sum(writes) / len(writes) if writes else 0.0,
        world_size=world_size, val_images=val_images, epochs=epochs)
    return parts


def _rate_at(rates: dict[int, float], resolution: int) -> tuple[float, bool]:
    """(images/sec at ``resolution``, whether it was measured): else the nearest
    measured resolution's rate scaled by the ratio of pixels."""
    if resolution in rates:
        return rates[resolution], True
    nearest = min(rates, key=lambda res: (abs(res - resolution), res))
    return rates[nearest] * (nearest / resolution) ** 2, False


def checkpoint_writes(epochs: int, *, last_every_epochs: int, last_every_seconds: float,
                      keep_every: int, seconds: float) -> int:
    """Epochs that write a checkpoint in a run of ``epochs``: ``last.pt`` every
    ``last_every_epochs`` (or, by time, once per ``last_every_seconds`` of the
    run's ``seconds``), ``epoch_NNNN.pt`` every ``keep_every`` (0 = never), and the
    last epoch (``final.pt``); a time-based write inside an epoch counts as one."""
    by_epoch = sum(1 for epoch in range(1, epochs + 1)
                   if (last_every_epochs and epoch % last_every_epochs == 0)
                   or (keep_every and epoch % keep_every == 0) or epoch == epochs)
    if last_every_seconds > 0:
        by_epoch += max(0, math.ceil(seconds / last_every_seconds) - 1)
    return by_epoch


def project(parts: dict, plan: dict, *, gpus: int, dataset_images: int,
            val_images: int) -> dict:
    """The time of the recipe ``plan`` on ``gpus`` GPUs like the measured one, from
    :func:`measured_parts`'s ``parts``. ``plan``: ``resolutions`` (pixels, one per
    epoch), ``eval_every`` (epochs), ``eval_from`` (the first 1-based epoch validated;
    optional), ``last_every_epochs``, ``last_every_seconds``, ``keep_every``. ``dataset_images`` and ``val_images``: images of one train epoch and
    one validation pass. Seconds throughout; :data:`ASSUMPTIONS` lists what it assumes.

    total = start-up + compilation of each shape + sum over epochs of
    ``dataset_images / (rate(resolution) x gpus)`` + validations x ``val_images /
    (val rate x gpus)`` + the first validation's warm-up + checkpoint writes x the
    seconds of one write.
    """
    if gpus < 1 or dataset_images < 1 or val_images < 0:
        raise ValueError("need gpus >= 1, dataset_images >= 1 and val_images >= 0")
    resolutions = plan['resolutions']
    epochs = len(resolutions)
    rates = {row['resolution']: row['images_per_sec_per_gpu'] for row in parts['train']}
    train = []
    for res in sorted(set(resolutions)):
        rate, measured = _rate_at(rates, res)
        count = resolutions.count(res)
        each = dataset_images / (rate * gpus)
        train.append({'resolution': res, 'epochs': count, 'images_per_sec_per_gpu': rate,
                      'measured': measured, 'seconds_per_epoch': each,
                      'seconds': each * count})
    train_s = sum(row['seconds'] for row in train)
    # the training loop's own rule
    schedule = FitOptions(epochs=epochs, eval_every=plan['eval_every'],
                          eval_from=plan.get('eval_from', 0))
    passes = sum(1 for epoch in range(1, epochs + 1) if validation_due(epoch, schedule))
    val_rate = parts['val_images_per_sec_per_gpu']
    val_each = val_images / (val_rate * gpus) if val_rate else 0.0
    val_s = passes * val_each + (parts['val_warmup_s'] if passes else 0.0)
    writes = checkpoint_writes(epochs, last_every_epochs=plan['last_every_epochs'],
                               last_every_seconds=plan['last_every_seconds'],
                               keep_every=plan['keep_every'], seconds=train_s + val_s)
    checkpoint_s = writes * parts['checkpoint_s_per_write']
    measured = {c['resolution']: c['seconds'] for c in parts['compile']}
    mean = sum(measured.values()) / len(measured) if measured else 0.0
    compile_rows = [{'resolution': res, 'seconds': measured.get(res, mean),
                     'measured': res in measured} for res in sorted(set(resolutions))]
    compile_s = sum(row['seconds'] for row in compile_rows)
    total = parts['startup_s'] + compile_s + train_s + val_s + checkpoint_s
    return {'gpus': gpus, 'dataset_images': dataset_images, 'val_images': val_images,
            'epochs': epochs, 'train': train, 'train_s': train_s,
            'validations': passes, 'val_s_per_pass': val_each,
            'val_warmup_s': parts['val_warmup_s'] if passes else 0.0, 'val_s': val_s,
            'checkpoint_writes': writes,
            'checkpoint_s_per_write': parts['checkpoint_s_per_write'],
            'checkpoint_s': checkpoint_s, 'startup_s': parts['startup_s'],
            'compile': compile_rows, 'compile_s': compile_s, 'total_s': total,
            'assumptions': list(ASSUMPTIONS)}
