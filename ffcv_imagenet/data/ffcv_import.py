"""Imports ffcv about 3 s faster per process than ``import ffcv`` does.

``ffcv.fields.rgb_image`` builds a two-entry lookup, ``{'jpg': 0, 'raw': 1}``, as a
numba typed ``Dict`` when it is imported. The first typed dict of a process compiles
numba's dict methods, which no cache keeps: that is most of ffcv's import time, and it
is paid again by every process that imports ffcv (each command, each rank under
torchrun, each worker of a test run). ffcv reads that lookup only from Python (to pick
a write mode, and as constants of the code it generates), so a plain dict does the same.

:func:`import_ffcv` imports ffcv with ``numba.typed.Dict`` swapped for ``dict`` during
that import only; numba is left as it was. Both sides of the data path call it before
their first ffcv import. A process that imported ffcv before then keeps its typed dict.
"""
from __future__ import annotations

import sys


def import_ffcv() -> None:
    """Imports ffcv (``ffcv`` and ``ffcv.fields.rgb_image``) once per process, without
    compiling numba's typed dict; a no-op when ffcv's image field is already imported."""
    if 'ffcv.fields.rgb_image' in sys.modules:
        return
    import numba.typed
    typed_dict = numba.typed.Dict
    numba.typed.Dict = dict
    try:
        import ffcv.fields.rgb_image  # noqa: F401 - the import is the point
    finally:
        numba.typed.Dict = typed_dict
