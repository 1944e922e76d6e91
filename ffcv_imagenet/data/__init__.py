"""The data path, in the order the images travel: image folders -> ``.beton`` -> batches.

- :mod:`.synthetic`: a generated, learnable ImageNet-like folder tree (the default data)
- :mod:`.folders`: a split's listing (class tree, or flat files + label file), class list, subset
- :mod:`.images`: one file -> RGB pixels, or the reason it cannot be read
- :mod:`.writer`: (path, label) list -> ``.beton``, atomically, with a report of skipped files
- :mod:`.decoders`: crop + scaled JPEG decode + resize + flip + normalise in one pass per image
- :mod:`.loaders`: train/val loaders of a ``.beton``: sharding, resolution changes, device batches

Nothing here reads the config system.
"""
