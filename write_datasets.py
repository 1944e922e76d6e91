"""Convert one split of an ImageNet-style folder to an FFCV .beton file.

    python write_datasets.py --cfg.split=train --cfg.data_dir=$IMAGENET/train \
        --cfg.write_path=betons/train.beton --preset rn50-published

The command lives in :mod:`ffcv_imagenet.cli.convert` (also ``python -m ffcv_imagenet
convert``); ``--help`` lists every key.
"""
import sys

from ffcv_imagenet.cli.convert import main, run

__all__ = ['main', 'run']

if __name__ == '__main__':
    sys.exit(run())
