"""Train a ResNet on .beton files: one process, or one per GPU under torchrun.

    python train_imagenet.py --config rn18_cpu_demo.yaml
    torchrun --nproc_per_node=8 train_imagenet.py --config rn50_88_epochs.yaml \
        --data.train_dataset=betons/train.beton --data.val_dataset=betons/val.beton
    python train_imagenet.py -C ... --checkpoint.resume=auto             # continue
    python train_imagenet.py -C ... --checkpoint.resume=PATH --training.eval_only=1

``python -m ffcv_imagenet train`` is the same command. A recipe named without a
folder is looked up in the current folder, then among the recipes shipped with the
package (``rn50_configs/``). Any key can be set on the command line
(``--training.epochs=16``); ``--help`` lists them.
"""
from __future__ import annotations

import sys

from ..data.folders import DatasetError
from ..data.read.torchvision_pipelines import OnDevice, standard_eval_loader
from ..training.plots import plot_run
from ..training.logs import RunLog, format_record
from ..training.distributed import weights_agree
from ..training.evaluate import validate
from ..training.loop import NonFiniteLossError, Run, fit
from ..training.preempt import PREEMPTED_EXIT, Preempted, StopSignals, clear_marker, \
    write_marker
from .config import ConfigError, parse_config
from .recipe import build_run, setup_distributed
from .runner import exit_code, report
from .train_config import SECTIONS, parse_crop_ratios, parse_resolutions

STANDARD_EVAL = 'torchvision standard eval'


def main(argv: list[str] | None = None) -> int:
    """Parses ``argv`` (default: the command line), trains or evaluates, returns the
    exit code; errors a user can cause propagate (see :func:`run`)."""
    config = parse_config(__doc__.splitlines()[0], argv, SECTIONS)
    dist = setup_distributed(config)
    run = build_run(config, dist)
    log = RunLog(run.run_dir, enabled=dist.is_main,
                 tensorboard=bool(config['logging.tensorboard']))
    for note in run.notes:
        report(note)
    if config['training.eval_only']:
        return evaluate_checkpoint(config, run, log)
    log.write_config(run.meta['config'])
    if dist.is_main and (marker := clear_marker(run.run_dir)):
        report(f"continuing after a stop by {marker.get('signal')} in epoch "
               f"{marker.get('epoch', 0) + 1}")
    log.event('resume' if run.resumed_from else 'start', epoch=run.state.epoch,
              step=run.state.step, world_size=dist.world_size,
              checkpoint=str(run.resumed_from) if run.resumed_from else None)
    try:
        with StopSignals() as run.stop:
            state = fit(run, log)
    except Preempted as stop:
        log.event('preempted', signal=stop.signal_name, epoch=stop.epoch, step=stop.step,
                  iteration=stop.iteration)
        if dist.is_main:
            write_marker(run.run_dir, stop)
        report(f"preempted: {stop}; continue with --checkpoint.resume=auto "
               f"(exit code {PREEMPTED_EXIT})")
        return PREEMPTED_EXIT
    except (NonFiniteLossError, KeyboardInterrupt) as err:
        log.event('stop', reason=str(err) or type(err).__name__)
        raise
    # a rank that drifted (a broken node, a bug in a collective) would otherwise go unseen:
    # rank 0's weights are the ones saved
    agree = weights_agree(run.module)
    log.event('end', epoch=state.epoch, ranks_agree=agree,
              **{f'best_{run.options.best_metric}': state.best_top1})
    if not agree:
        report("warning: the processes ended with different weights; the checkpoints hold "
               "rank 0's")
    log.close()
    if config['logging.plot'] and dist.is_main:
        try:
            plot_run(run.run_dir)
        except (OSError, ValueError) as err:  # the run itself is complete and saved
            report(f"warning: no plots written: {err}")
    stopped = (f" (stopped early: no better {run.options.best_metric} since epoch "
               f"{state.best_epoch})" if state.stopped_early else "")
    report(f"done: {state.epoch}/{run.options.epochs} epochs{stopped}, best "
           f"{run.options.best_metric} {state.best_top1:.4f}, logs and checkpoints in "
           f"{run.run_dir}")
    return 0


def evaluate_checkpoint(config, run: Run, log: RunLog) -> int:
    """``training.eval_only``: validates the loaded checkpoint on the val ``.beton`` (at
    each resolution and centre-crop ratio asked for), then, with ``validation.folder``,
    by torchvision's standard evaluation on rank 0; logs an ``eval`` event and prints a
    line for each."""
    dist = run.dist
    # built (listed and checked) on every rank before any work, so that a bad folder
    # stops all of them with the same one-line error
    standard = _standard_eval_batches(config, run)
    _evaluate_beton(run, log, parse_resolutions(config['validation.resolutions']),
                    parse_crop_ratios(config['validation.crop_ratios']))
    if standard is not None and dist.is_main:
        # one rank reads the whole folder: the others have nothing left to do
        metrics = validate(run.module, run.ema, standard, precision=run.precision,
                           tta=False, device=dist.device, show_progress=True,
                           all_ranks=False)
        resize, crop = config['validation.folder_resize'], config['validation.folder_crop']
        log.event('eval', checkpoint=str(run.resumed_from), protocol=STANDARD_EVAL,
                  folder=config['validation.folder'], resize=resize, crop=crop,
                  images=len(standard.loader.dataset) - len(standard.skipped),
                  skipped=len(standard.skipped), **metrics)
        report(f"{STANDARD_EVAL} of {run.resumed_from} on {config['validation.folder']} "
               f"(shorter side {resize} px, centre crop {crop} px): "
               + format_record(metrics))
    return 0


def _evaluate_beton(run: Run, log: RunLog, resolutions: list[int],
                    crop_ratios: list[float]) -> None:
    """Validates on the val ``.beton`` at each resolution (pixels) and centre-crop ratio
    asked for (the config's own when none are), printing a table when asked for any."""
    loader, dist = run.val_loader, run.dist
    rows = []
    for resolution in resolutions or [loader.resolution]:
        for ratio in crop_ratios or [loader.center_ratio]:
            loader.resolution, loader.center_ratio = resolution, ratio
            metrics = validate(run.module, run.ema, loader, precision=run.precision,
                               tta=run.options.tta, device=dist.device,
                               show_progress=dist.is_main)
            log.event('eval', checkpoint=str(run.resumed_from), resolution=resolution,
                      crop_ratio=ratio, **metrics)
            report(f"eval {run.resumed_from} at {resolution} px, crop ratio {ratio:g}: "
                   + format_record(metrics))
            rows.append({'resolution': resolution, 'crop_ratio': ratio, **metrics})
    if resolutions or crop_ratios:
        report(resolution_table(rows))


def _standard_eval_batches(config, run: Run) -> OnDevice | None:
    """The ``validation.folder`` batches on the run's device, or None without one.
    Raises:
        ConfigError: the folder is missing or does not match the run's class list.
    """
    folder = config['validation.folder']
    if not folder:
        return None
    try:
        loader = standard_eval_loader(
            folder, run.meta['classes'], resize=config['validation.folder_resize'],
            crop=config['validation.folder_crop'],
            batch_size=config['validation.batch_size'], workers=run.train_loader.num_workers)
    except DatasetError as err:
        raise ConfigError(f"validation.folder: {err}") from None
    return OnDevice(loader, run.dist.device, channels_last=bool(config['model.channels_last']),
                    on_skip=lambda message: report(f"skipped {message}"))


def resolution_table(rows: list[dict]) -> str:
    """A markdown table of validation metrics per resolution and crop ratio (top-1/top-5
    as %)."""
    columns = [key for key in ('val_top1', 'val_top5', 'ema_val_top1', 'ema_val_top5')
               if key in rows[0]]
    lines = ['| resolution (px) | crop ratio | ' + ' | '.join(columns) + ' |',
             '|---|---|' + '---|' * len(columns)]
    for row in rows:
        lines.append(f"| {row['resolution']} | {row['crop_ratio']:g} | " +
                     ' | '.join(f"{100 * row[key]:.2f}" for key in columns) + ' |')
    return '\n'.join(lines)


def run(argv: list[str] | None = None) -> int:
    """:func:`main` with the errors a user can cause turned into one line and an exit
    code (2 config or checkpoint, 1 non-finite loss, 130 Ctrl-C)."""
    return exit_code(lambda: main(argv),
                     interrupted="interrupted: checkpoints written so far are intact "
                                 "(continue with --checkpoint.resume=auto)")


if __name__ == '__main__':
    sys.exit(run())
