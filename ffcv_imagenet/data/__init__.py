"""The data path, in the order the images travel: image folders -> ``.beton`` -> batches.

- :mod:`.synthetic`: a generated, learnable ImageNet-like folder tree (the default data)
- :mod:`.folders`: a split's listing (class tree, flat files + label file, Tiny ImageNet's val),
  class list, subset
- :mod:`.images`: one file -> RGB pixels, or the reason it cannot be read
- :mod:`.sandbox`: runs decoders on untrusted files in disposable child processes (time
  and memory limits, stderr captured, crashes survived)
- :mod:`.writer`: (path, label) list -> ``.beton``, atomically, with a report of skipped files
- :mod:`.decoders`: crop + scaled JPEG decode + resize + flip + normalise in one pass per image
- :mod:`.jpeg_region`: decodes only the part of a JPEG around a crop (C: ``jpeg_region.c``)
- :mod:`.beton`: checks a ``.beton`` before loading: whole file, fields, labels vs classes
- :mod:`.loaders`: train/val loaders of a ``.beton``: sharding, resolution changes, device batches
- :mod:`.decode_ceiling`, :mod:`.peer_pipelines`: what the loader is timed against (decoding
  alone; ffcv's stock pipeline, DALI's CPU pipeline)

Nothing here reads the config system.
"""
