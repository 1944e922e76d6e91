"""The trainer timed whole: the real training command run for a few epochs across its
resolution switch, its ``log.jsonl`` read back into where the time went, and the time
of a whole recipe projected from it.

    python -m ffcv_imagenet bench trainer -C rn50_32_epochs --out runs/bench_trainer \
        --set data.train_dataset=betons/train.beton --set data.val_dataset=betons/val.beton \
        --project rn50_32_epochs --gpus 8 --json bench_trainer.json

The run is ``python -m ffcv_imagenet train`` in a fresh process (so that start-up is
measured as a user meets it) on the config files given, with the recipe shortened to
``--epochs`` epochs and its linear ramp to ``--start-ramp``/``--end-ramp`` (a recipe
with ``resolution.stages`` keeps its stages), then every ``--set KEY=VALUE``;
validation and checkpoints are as the recipe sets them. The projected recipe
(``--project``, default the one run) takes the same ``--set`` settings but not the
shortening. The parts and the projection
are computed by :mod:`.projection`.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from ...cli.config import ConfigError, parse_config
from ...cli.train_config import SECTIONS, resolution_stages
from ...data.read.beton import check_beton
from ...training.logs import CONFIG_FILE, read_log
from ...training.preempt import CheckpointPeriod
from ...training.schedules import resolution_at
from .projection import measured_parts, project

PACKAGE_ROOT = Path(__file__).resolve().parents[3]  # the folder holding ffcv_imagenet/


def shortening(epochs: int = 3, start_ramp: int = 1, end_ramp: int = 2) -> list[str]:
    """The flags that shorten a recipe to ``epochs`` with its ramp between the 0-based
    epochs ``start_ramp`` and ``end_ramp`` (the switch of resolution inside the run)."""
    return [f'--training.epochs={epochs}', f'--resolution.start_ramp={start_ramp}',
            f'--resolution.end_ramp={end_ramp}']


def train_argv(configs: list[str], sets: list[str], out: str | os.PathLike,
               shorten: list[str]) -> list[str]:
    """The training command's arguments: config files, the shortening, then ``sets``
    ('section.key=value', later ones win), into the run folder ``out``."""
    for item in sets:
        if '=' not in item or '.' not in item.split('=')[0]:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
    return [*(part for name in configs for part in ('-C', name)), *shorten,
            *(f'--{item}' for item in sets), f'--logging.folder={out}']


def run_training(argv: list[str]) -> float:
    """Runs ``python -m ffcv_imagenet train ARGV`` in a new process of this Python and
    this package; returns its launch time (unix seconds).
    Raises:
        RuntimeError: the command failed (its own output says why).
    """
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT),
                                                      env.get('PYTHONPATH')]))
    launched = time.time()
    code = subprocess.call([sys.executable, '-m', 'ffcv_imagenet', 'train', *argv], env=env)
    if code != 0:
        raise RuntimeError(f"the training command exited with code {code}")
    return launched


def recipe_plan(configs: list[str], sets: list[str]) -> dict:
    """What the projection needs of a recipe (config files and 'section.key=value'
    settings): its resolution per epoch (pixels), validation and checkpoint periods,
    model and batch.
    Raises:
        ConfigError: a bad recipe, key or value.
    """
    config = parse_config('bench trainer', [
        *(part for name in configs for part in ('-C', name)), *(f'--{s}' for s in sets),
        '--logging.folder=unused'], SECTIONS)
    epochs, stages = config['training.epochs'], resolution_stages(config)
    if stages is not None:
        resolutions = [stages.at(epoch).resolution for epoch in range(epochs)]
    else:
        ramp = {key: config[f'resolution.{key}']
                for key in ('min_res', 'max_res', 'start_ramp', 'end_ramp')}
        try:
            resolutions = [resolution_at(epoch, **ramp) for epoch in range(epochs)]
        except ValueError as err:
            raise ConfigError(f"resolution: {err}") from None
    try:
        period = CheckpointPeriod.parse(config['checkpoint.last_every'])
    except ValueError as err:
        raise ConfigError(f"checkpoint.last_every: {err}") from None
    return {'recipe': ' + '.join(configs) or '(defaults)', 'resolutions': resolutions,
            'eval_every': config['validation.every'],
            'eval_from': config['validation.start_epoch'], 'last_every_epochs': period.epochs,
            'last_every_seconds': period.seconds, 'keep_every': config['checkpoint.every'],
            'arch': config['model.arch'], 'batch_size': config['training.batch_size'],
            'compile': config['model.compile']}


def _device_name(device: str) -> str:
    if device != 'cpu':
        import torch
        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name()} (x{torch.cuda.device_count()} here)"
    return f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def read_run(run_dir: str | os.PathLike, launched_at: float) -> dict:
    """:func:`~.projection.measured_parts` of the fresh run in ``run_dir``."""
    import json
    config = json.loads((Path(run_dir) / CONFIG_FILE).read_text())
    start = read_log(run_dir, 'start')[-1]
    val_images = check_beton(config['data.val_dataset']).num_samples
    parts = measured_parts(read_log(run_dir, 'epoch'), launched_at,
                           world_size=start['world_size'], val_images=val_images)
    parts['config'] = {key: config[key] for key in (
        'model.arch', 'model.compile', 'training.batch_size', 'training.device',
        'training.precision', 'data.num_workers', 'data.train_dataset')}
    parts['device_name'] = _device_name(config['training.device'])
    return parts


def bench_trainer(configs: list[str], sets: list[str], out: str | os.PathLike, *,
                  shorten: list[str], project_configs: list[str] | None = None, gpus: int = 8,
                  dataset_images: int = 1_281_167, val_images: int = 50_000,
                  variant_sets: list[str] = ()) -> dict:
    """Runs the shortened recipe into ``out`` (a new or empty folder), reads its
    log and projects ``project_configs`` (default: the recipe run) with ``sets``, not
    shortened, on ``gpus`` GPUs. Returns {'measured', 'plan', 'projection',
    'run_dir', 'command'}; with ``variant_sets`` (settings added after ``sets``: the
    speed-run set, say), also 'variant_plan' and 'variant_projection', the same recipe
    projected with them from the same measured parts.
    Raises:
        ConfigError: a bad setting, or an ``out`` that holds files.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out: {out} is not empty; give a new folder")
    projected = configs if project_configs is None else project_configs
    plan = recipe_plan(projected, sets)  # a bad recipe stops the bench before the run
    variant = recipe_plan(projected, [*sets, *variant_sets]) if variant_sets else None
    argv = train_argv(configs, sets, out, shorten)
    measured = read_run(out, run_training(argv))
    projection = project(measured, plan, gpus=gpus, dataset_images=dataset_images,
                         val_images=val_images)
    result = {'measured': measured, 'plan': plan, 'projection': projection,
              'run_dir': str(out), 'command': ['python', '-m', 'ffcv_imagenet', 'train', *argv]}
    if variant is not None:
        variant['recipe'] += ' with ' + ' '.join(f'--{item}' for item in variant_sets)
        result.update(variant_plan=variant, variant_projection=project(
            measured, variant, gpus=gpus, dataset_images=dataset_images,
            val_images=val_images))
    return result


def _row(name: str, seconds: float, total: float, what: str) -> str:
    share = f"{seconds / total:.1%}" if total > 0 else '-'
    return f"| {name} | {seconds:.2f} | {share} | {what} |"


def format_breakdown(measured: dict) -> str:
    """The measured run's parts as a markdown table."""
    m, total = measured, measured['total_s']
    config = m['config']
    lines = [f"### Measured: {config['model.arch']}, batch {config['training.batch_size']} "
             f"per process, {m['world_size']} process(es), "
             f"{'compiled' if config['model.compile'] else 'eager'}, "
             f"{config['data.num_workers']} loader threads; {m['device_name']}", '',
             '| part | seconds | share | what |', '|---|---:|---:|---|',
             _row('start-up', m['startup_s'], total,
                  'process start to the first step (imports, build, first batch)')]
    for row in m['compile']:
        lines.append(_row(f"compilation, {row['resolution']} px x {row['batch_size']}",
                          row['seconds'], total, 'first step at this shape less a '
                                                 'steady step'))
    lines += [
        _row('training steps', m['steps_s'], total,
             'epoch time less loader waits, compilation, validation, checkpoints'),
        _row('loader waits', m['data_wait_s'], total, 'blocked in next() of the train loader'),
        _row('validation', m['val_s'], total, 'validation passes'),
        _row('checkpoint writes', m['checkpoint_s'], total, "rank 0's writes"),
        f"| **sum** | **{total:.2f}** | 100% | |",
        f"| measured wall time | {m['wall_s']:.2f} | | launch to the last epoch's log line |",
        _row('resolution switch', m['switch_s'], total,
             'within the rows above: compilation and the extra first-batch wait of the '
             'first epoch at a new resolution'),
        '', '| resolution (px) | images | seconds | images/sec per GPU |', '|---:|---:|---:|---:|']
    lines += [f"| {row['resolution']} | {row['images']} | {row['seconds']:.2f} | "
              f"{row['images_per_sec_per_gpu']:.1f} |" for row in m['train']]
    return '\n'.join(lines)


def format_projection(projection: dict, plan: dict) -> str:
    """The projection as a markdown table with its assumptions."""
    p = projection
    lines = [f"### Projected: {plan['recipe']} ({p['epochs']} epochs) on {p['gpus']} GPUs "
             f"like the measured one, {p['dataset_images']} train and {p['val_images']} "
             f"val images", '', '| part | count | seconds each | seconds |',
             '|---|---:|---:|---:|']
    for row in p['train']:
        mark = '' if row['measured'] else ' (scaled)'
        lines.append(f"| train at {row['resolution']} px{mark} | {row['epochs']} epochs | "
                     f"{row['seconds_per_epoch']:.1f} | {row['seconds']:.1f} |")
    lines += [f"| validation | {p['validations']} passes | {p['val_s_per_pass']:.1f} | "
              f"{p['validations'] * p['val_s_per_pass']:.1f} |",
              f"| first validation's warm-up | 1 | {p['val_warmup_s']:.1f} | "
              f"{p['val_warmup_s']:.1f} |",
              f"| checkpoint writes | {p['checkpoint_writes']} | "
              f"{p['checkpoint_s_per_write']:.2f} | {p['checkpoint_s']:.1f} |",
              f"| start-up | 1 | {p['startup_s']:.1f} | {p['startup_s']:.1f} |"]
    for row in p['compile']:
        mark = '' if row['measured'] else ' (mean of measured)'
        lines.append(f"| compilation at {row['resolution']} px{mark} | 1 | "
                     f"{row['seconds']:.1f} | {row['seconds']:.1f} |")
    lines += [f"| **total** | | | **{p['total_s']:.0f} ({p['total_s'] / 3600:.2f} h)** |",
              '', 'Assumes:', *(f"- {text}" for text in p['assumptions'])]
    return '\n'.join(lines)


def format_saving(result: dict) -> str:
    """What the variant saves against the recipe as projected, part by part."""
    before, after = result['projection'], result['variant_projection']
    lines = [f"### Saved by {' '.join(result['variant_plan']['recipe'].split(' with ')[1:])}",
             '', '| part | recipe s | with the settings s | saved s |', '|---|---:|---:|---:|']
    for name, key in (('validation', 'val_s'), ('checkpoint writes', 'checkpoint_s'),
                      ('training', 'train_s'), ('total', 'total_s')):
        lines.append(f"| {name} | {before[key]:.1f} | {after[key]:.1f} | "
                     f"{before[key] - after[key]:.1f} |")
    saved = before['total_s'] - after['total_s']
    share = saved / before['total_s'] if before['total_s'] > 0 else 0.0
    lines.append(f"\nValidations {before['validations']} -> {after['validations']}, "
                 f"checkpoint writes {before['checkpoint_writes']} -> "
                 f"{after['checkpoint_writes']}: {share:.1%} of the projected run.")
    return '\n'.join(lines)


def format_trainer_report(result: dict) -> str:
    """The tables of a :func:`bench_trainer` result, markdown: the breakdown, the
    projection, and with a variant its projection and what it saves."""
    parts = [format_breakdown(result['measured']),
             format_projection(result['projection'], result['plan'])]
    if 'variant_projection' in result:
        parts += [format_projection(result['variant_projection'], result['variant_plan']),
                  format_saving(result)]
    return '\n\n'.join(parts)
