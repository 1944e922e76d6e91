"""The tests, laid out as the package is.

- ``tests/data/``, ``tests/data/write/``, ``tests/data/read/``, ``tests/training/``,
  ``tests/cli/``, ``tests/tools/``, ``tests/tools/bench/``: one ``test_<module>.py`` per
  module of ``ffcv_imagenet`` that has tests of its own, in the folder of that module
  (the tests of ``ffcv_imagenet/data/read/loaders.py`` are in
  ``tests/data/read/test_loaders.py``);
- at the top, what a user does, end to end: ``test_convert.py`` (the conversion
  command), ``test_train.py`` (the training command), ``test_resume.py`` (stopping a run
  and continuing it), ``test_eval_only.py`` (evaluating a checkpoint),
  ``test_recipes.py`` (the shipped recipes), ``test_install_offline.py`` (the wheelhouse
  on a GPU node without internet); and the repository's own checks: ``test_layout.py``
  (the package's layers and the names the docs use), ``test_packaging.py`` (the set-up
  files, the wheel, what CI's second environment runs);
- ``conftest.py``: the fixtures (generated data, .beton files, tiny training runs, the
  wheelhouse); ``support.py``: the helpers the test files share.

The tests folder is a package, so that files of the same name in two folders do not
clash and the helpers import as ``from tests.support import ...``; run the tests from
the repository root (``python -m pytest tests``). Markers: ``slow`` (end-to-end tests of
tens of seconds) and ``cuda`` (needs a CUDA GPU).
"""
