"""The data path, in the order the images travel: image folders -> ``.beton`` -> batches.

Beside the two sides, what both use:

- :mod:`.folders`: a split's listing (class tree, flat files + label file, Tiny ImageNet's
  val), the class list written beside a ``.beton``, subsets, :class:`DatasetError`
- :mod:`.synthetic`: a generated, learnable ImageNet-like folder tree (the default data)
- :mod:`.ffcv_import`: imports ffcv without compiling numba's typed dict (3 s per process)

:mod:`.write` turns folders into a ``.beton`` (the conversion); :mod:`.read` turns a
``.beton`` into batches (training and evaluation). The two sides never import each
other. Nothing here reads the config system.
"""
