"""``python -m ffcv_imagenet bench``: images/sec, side by side in one run.

- :mod:`.command`: the command line (``bench loader``, ``bench train``)
- :mod:`.loader`: the loaders timed in interleaved rounds beside their ceilings and peers
- :mod:`.decode_ceiling`: the stored JPEGs decoded and nothing else (the ceiling)
- :mod:`.peers`: ffcv's stock pipeline and DALI's CPU pipeline on the same images
- :mod:`.revision`: an older git revision's loaders imported beside today's
- :mod:`.steps`: training steps, the model alone vs end to end from the loader
"""
