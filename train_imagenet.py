"""Train a ResNet on .beton files: one process, or one per GPU under torchrun.

    python train_imagenet.py -C rn50_configs/rn18_cpu_demo.yaml
    torchrun --nproc_per_node=8 train_imagenet.py -C rn50_configs/rn50_88_epochs.yaml \
        --data.train_dataset=betons/train.beton --data.val_dataset=betons/val.beton
    python train_imagenet.py -C ... --checkpoint.resume=auto             # continue
    python train_imagenet.py -C ... --checkpoint.resume=PATH --training.eval_only=1

Any key can be set on the command line (``--training.epochs=16``); ``--help`` lists them.
"""
import sys

from ffcv_imagenet.config import parse_config
from ffcv_imagenet.logs import RunLog, format_record
from ffcv_imagenet.plots import plot_run
from ffcv_imagenet.recipe import build_run, exit_code, report, setup_distributed
from ffcv_imagenet.train_config import SECTIONS
from ffcv_imagenet.trainer import NonFiniteLossError, fit, validate


def main(argv=None) -> int:
    config = parse_config(__doc__.splitlines()[0], argv, SECTIONS)
    dist = setup_distributed(config)
    run = build_run(config, dist)
    parts = run.parts
    log = RunLog(run.run_dir, enabled=dist.is_main,
                 tensorboard=bool(config['logging.tensorboard']))
    for note in run.notes:
        report(note)
    if config['training.eval_only']:
        metrics = validate(parts.module, run.ema, parts.val_loader, precision=parts.precision,
                           tta=run.options.tta, device=dist.device, show_progress=dist.is_main)
        log.event('eval', checkpoint=str(run.resumed_from), **metrics)
        report(f"eval {run.resumed_from}: " + format_record(metrics))
        return 0
    log.write_config(run.meta['config'])
    log.event('resume' if run.resumed_from else 'start', epoch=run.state.epoch,
              checkpoint=str(run.resumed_from) if run.resumed_from else None,
              world_size=dist.world_size)
    try:
        state = fit(parts.model, parts.optimizer, parts.scaler, parts.train_loader,
                    parts.val_loader, lr_at=run.lr_at, res_at=run.res_at,
                    precision=parts.precision, options=run.options, state=run.state,
                    dist=dist, log=log, run_dir=run.run_dir, meta=run.meta,
                    mixer=parts.mixer, ema=run.ema)
    except (NonFiniteLossError, KeyboardInterrupt) as err:
        log.event('stop', reason=str(err) or type(err).__name__)
        raise
    log.event('end', epoch=state.epoch, **{f'best_{run.options.best_metric}': state.best_top1})
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


if __name__ == '__main__':
    sys.exit(exit_code(main, interrupted="interrupted: checkpoints written so far are "
                                         "intact (continue with --checkpoint.resume=auto)"))
