"""Commands that stand beside training (each also ``python -m ffcv_imagenet <name>``).

- :mod:`.bench`: images/sec of the loaders, the torchvision baseline and training steps
  (:mod:`.bench_loader` times the loaders, :mod:`.revision` imports an older revision's
  beside them)
- :mod:`.preview`: a PNG grid of one augmented training batch
- :mod:`.plots`: PNG plots of a run's ``log.jsonl``
- :mod:`.lr_finder`: the learning-rate range test on a recipe
- :mod:`.sweep`: ablation sweeps (:mod:`.sweep_runner` runs the variants,
  :mod:`.sweep_summary` writes the table and the plot)
"""
