"""The read side: a ``.beton`` (or, for the standard evaluation, a folder) -> batches.

- :mod:`.beton`: checks a ``.beton`` before loading: whole file, fields, labels vs classes
- :mod:`.loaders`: train/val loaders of a ``.beton``: sharding, resolution changes,
  device batches
- :mod:`.ffcv_loader`: ffcv's ``Loader`` with a set-up hook, per-epoch buffers and
  several batches decoded per launch of its pipeline
- :mod:`.decoders`: crop + scaled JPEG decode + resize + flip + normalise in one pass
  per image
- :mod:`.jpeg_region`: decodes only the part of a JPEG around a crop (C:
  ``jpeg_region.c``)
- :mod:`.resize`: the area resize with flip and normalisation in the same pass
  (:mod:`.resize_vector`: its horizontal pass in vector code)
- :mod:`.torchvision_pipelines`: the standard ImageNet evaluation (resize 256, centre
  crop 224) of a folder, and the plain torchvision train pipeline
"""
from ..ffcv_import import import_ffcv

# before any module here imports ffcv (each does at its top): 3 s less per process
import_ffcv()
