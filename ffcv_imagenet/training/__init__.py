"""Training, in the order a run is built and trained: network, optimizer and precision,
schedules, mixing and EMA, then the loop, which writes checkpoints and logs.

- :mod:`.models`: ResNet-18/50 with torchvision's keys, BlurPool, zero-init, drop path
- :mod:`.optim`: SGD parameter groups (no decay on norms and biases), precision (AMP)
- :mod:`.schedules`: learning rate per iteration, resolution per epoch
- :mod:`.mix`: MixUp / CutMix of a device batch, soft targets
- :mod:`.ema`: an fp32 moving average of the weights
- :mod:`.distributed`: torchrun environment -> process group; reductions across ranks
- :mod:`.loop`: one step, one epoch, validation, and ``fit(run, log)``
- :mod:`.checkpoint`: training state <-> checkpoint dict; atomic save, checked load
- :mod:`.logs`: ``config.json``, ``log.jsonl``, TensorBoard, progress bar

Everything arrives as explicit arguments: nothing here reads the config system (a
test checks that importing the package never loads fastargs or :mod:`ffcv_imagenet.cli`).
"""
