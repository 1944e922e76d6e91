#!/usr/bin/env bash
# The EMA's BatchNorm statistics copied from the raw model (ema.buffers=copy) against
# averaged with the weights (ema.buffers=average): the CPU advanced recipe
# (rn50_cpu_advanced.yaml: ResNet-50, drop path, MixUp + CutMix, OneCycle over 6
# epochs, EMA decay 0.99 per step) trained for its first EPOCHS epochs once per mode,
# same seed, so that the raw weights are identical in both runs; then a table of each
# epoch's raw and EMA val top-1 and EMA val loss.
#
#   benchmarks/ema_buffers.sh [OUT]        (default OUT: data/ema_buffers)
#
# Environment: PYTHON (default .venv/bin/python, from make install), EPOCHS (3),
# CLASSES (10), TRAIN_PER_CLASS (300), VAL_PER_CLASS (50): the synthetic set of
# make demo, generated again under OUT with seed 0 and converted at 256 px. Run from
# the repository root.
set -euo pipefail
OUT=${1:-data/ema_buffers}
PYTHON=${PYTHON:-.venv/bin/python}
EPOCHS=${EPOCHS:-3}
S=$OUT/synthetic
mkdir -p "$OUT"
[ -f "$S/.done" ] || {
  "$PYTHON" -m ffcv_imagenet synthetic --out "$S" --classes "${CLASSES:-10}" \
      --train-per-class "${TRAIN_PER_CLASS:-300}" --val-per-class "${VAL_PER_CLASS:-50}" --seed 0
  touch "$S/.done"
}
[ -f "$OUT/val.beton" ] || {
  "$PYTHON" write_datasets.py --cfg.split=train --cfg.data_dir="$S/train" \
      --cfg.write_path="$OUT/train.beton" --cfg.max_resolution=256
  "$PYTHON" write_datasets.py --cfg.split=val --cfg.data_dir="$S/val" \
      --cfg.write_path="$OUT/val.beton" --cfg.max_resolution=256 \
      --cfg.classes="$OUT/train.beton.classes.json"
}
for mode in copy average; do
  "$PYTHON" train_imagenet.py -C rn50_cpu_advanced.yaml --data.train_dataset="$OUT/train.beton" \
      --data.val_dataset="$OUT/val.beton" --ema.buffers=$mode --training.stop_after="$EPOCHS" \
      --logging.folder="$OUT/run_$mode" --logging.progress=0
done
"$PYTHON" - "$OUT" <<'PY'
import sys
from ffcv_imagenet.training.logs import read_log
runs = {mode: read_log(f"{sys.argv[1]}/run_{mode}", 'epoch') for mode in ('copy', 'average')}
print('| epoch | raw val top-1 | EMA top-1, copy | EMA top-1, average '
      '| EMA val loss, copy | EMA val loss, average |')
print('|---|---|---|---|---|---|')
for copy, average in zip(runs['copy'], runs['average']):
    print(f"| {copy['epoch']} | {copy['val_top1']:.3f} | {copy['ema_val_top1']:.3f} "
          f"| {average['ema_val_top1']:.3f} | {copy['ema_val_loss']:.3f} "
          f"| {average['ema_val_loss']:.3f} |")
PY
