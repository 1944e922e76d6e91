"""Commands that stand beside training (each also ``python -m ffcv_imagenet <name>``).

- :mod:`.bench`: images/sec of the loaders beside their peers and their decoding
  ceiling, and of training steps (model alone vs end to end)
- :mod:`.gpu_check`: does this GPU node work, and how fast
- :mod:`.preview`: a PNG grid of one augmented training batch
- :mod:`.plots`: PNG plots of a run's ``log.jsonl`` (the drawing is
  :mod:`ffcv_imagenet.training.plots`)
- :mod:`.lr_finder`: the learning-rate range test on a recipe
- :mod:`.sweep`: ablation sweeps (:mod:`.sweep_runner` runs the variants,
  :mod:`.sweep_summary` writes the table and the plot)

The top layer: tools may import :mod:`ffcv_imagenet.cli`, never the other way round.
"""
