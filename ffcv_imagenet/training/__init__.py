"""Training, in the order a run is built and trained: network, optimizer and precision,
schedules, augmentation on the device and EMA, then the loop, which validates and writes
checkpoints and logs.

- :mod:`.models`: ResNet-18/50 with torchvision's keys, BlurPool, zero-init, drop path
- :mod:`.optim`: SGD parameter groups (which tensors get weight decay), precision (AMP)
- :mod:`.schedules`: learning rate per iteration, resolution per epoch
- :mod:`.mix`: MixUp / CutMix of a device batch, soft targets
- :mod:`.erasing`: random erasing of a device batch
- :mod:`.ema`: an fp32 moving average of the weights
- :mod:`.distributed`: torchrun environment -> process group; reductions across ranks
- :mod:`.loop`: one step, one epoch, and ``fit(run, log)``
- :mod:`.evaluate`: validation (top-1/top-5, flip averaging, the EMA's weights)
- :mod:`.preempt`: stop signals, the preempted exit code, the time-based checkpoint period
- :mod:`.checkpoint`: training state <-> checkpoint dict; atomic save, checked load
- :mod:`.logs`: ``config.json``, ``log.jsonl``, TensorBoard, progress bar
- :mod:`.plots`: PNG plots of a run's ``log.jsonl``
- :mod:`.export`: a trained network -> torchvision ``state_dict``, ``.pt2`` or ONNX,
  each loaded back and checked against the network's logits

Everything arrives as explicit arguments: nothing here reads the config system (a
test checks that importing the package never loads fastargs or :mod:`ffcv_imagenet.cli`).
"""
