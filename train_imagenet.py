"""Train a ResNet on .beton files: one process, or one per GPU under torchrun.

    torchrun --nproc_per_node=8 train_imagenet.py --config rn50_88_epochs.yaml \
        --data.train_dataset=betons/train.beton --data.val_dataset=betons/val.beton

The command lives in :mod:`ffcv_imagenet.cli.train` (also ``python -m ffcv_imagenet
train``); ``--help`` lists every key.
"""
import sys

from ffcv_imagenet.cli.train import main, run

__all__ = ['main', 'run']

if __name__ == '__main__':
    sys.exit(run())
