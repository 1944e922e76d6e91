"""Fixtures: small synthetic datasets and their .beton files, tiny training runs that
several test files read (each generated once per test process), the offline wheelhouse;
and a last-resort end for a test that hangs."""
import faulthandler
import os
import sys
from pathlib import Path

# the tiny runs' math on one torch thread (as the loaders' thread count used to set
# it): a test process shares the cores with the decoding threads and with the other
# test processes; the tests of the thread rule set or clear it themselves
os.environ.setdefault('OMP_NUM_THREADS', '1')

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the entry points live at the repository root
    sys.path.insert(0, str(ROOT))

from ffcv_imagenet.data.folders import list_tree  # noqa: E402
from ffcv_imagenet.data.synthetic import generate  # noqa: E402
from ffcv_imagenet.data.write.writer import write_beton  # noqa: E402
from tests.support import (FEATURES, STAGED, build_or_reuse_wheelhouse,  # noqa: E402
                           tiny_args, train_tiny)

# after pytest-timeout's limit (pyproject.toml), for the signal to be handled
BACKSTOP_SECONDS = 60


def pytest_collection_modifyitems(config, items):
    """The slow tests first, in their order: pytest-xdist hands tests out in this order,
    so the two workers start on the long end-to-end runs and end on short tests,
    instead of one waiting while the other finishes a two-minute run."""
    items.sort(key=lambda item: item.get_closest_marker('slow') is None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """pytest-timeout fails a hung test by a signal, which a call in C that retries its
    wait never sees: this ends the process a minute later (pytest-xdist then reports the
    test as crashed and starts a new worker), so that the suite always finishes."""
    config = item.config
    # a node with no pytest-timeout (the GPU check's bare pytest) has no limit to back
    limit = (float(config.getoption('timeout') or config.getini('timeout') or 0)
             if config.pluginmanager.hasplugin('timeout') else 0)
    if limit:
        faulthandler.dump_traceback_later(limit + BACKSTOP_SECONDS, exit=True,
                                          file=sys.__stderr__)
    try:
        return (yield)
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope='session')
def synth(tmp_path_factory):
    """A 4-class tree: 12 train and 5 val images per class."""
    return generate(tmp_path_factory.mktemp('synth'), classes=4, train_per_class=12,
                    val_per_class=5, seed=3, workers=2)


@pytest.fixture(scope='session')
def betons(synth, tmp_path_factory):
    """(train.beton, val.beton) of ``synth``, JPEG at 128 px max side."""
    out = tmp_path_factory.mktemp('betons')
    train_samples, classes = list_tree(synth / 'train')
    val_samples, _ = list_tree(synth / 'val', classes)
    write_beton(train_samples, out / 'train.beton', classes, max_resolution=128, num_workers=2)
    write_beton(val_samples, out / 'val.beton', classes, max_resolution=128, num_workers=2)
    return out / 'train.beton', out / 'val.beton'


# --- tiny training runs (tests.support.tiny_args), read-only: copy one to change it ---

@pytest.fixture(scope='session')
def full_run(betons, tmp_path_factory):
    """An uninterrupted 2-epoch run."""
    import train_imagenet
    folder = tmp_path_factory.mktemp('full') / 'run'
    assert train_imagenet.main(tiny_args(betons, folder)) == 0
    return folder


@pytest.fixture(scope='session')
def featured(betons, tmp_path_factory):
    """One uninterrupted 2-epoch run with every recipe feature on."""
    return train_tiny(betons, tmp_path_factory.mktemp('featured') / 'run', *FEATURES)


@pytest.fixture(scope='session')
def staged_run(betons, tmp_path_factory):
    """Two epochs: 32 px at batch 16, then 48 px at batch 8 (48 training images)."""
    import train_imagenet
    folder = tmp_path_factory.mktemp('staged') / 'run'
    assert train_imagenet.main(tiny_args(betons, folder, *STAGED)) == 0
    return folder


@pytest.fixture(scope='session')
def wheelhouse(tmp_path_factory):
    """The offline wheelhouse (see tests.support), built once per test process."""
    return build_or_reuse_wheelhouse(tmp_path_factory)
