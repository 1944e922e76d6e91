"""Importing an older git revision of the package beside the running one (the loader
benchmark's ``--reference``)."""
import subprocess
import sys

import pytest

from ffcv_imagenet.tools.bench import revision


def _commit(root, files):
    """Writes ``files`` ({path: text}) under ``root``, a git checkout it creates if
    needed, commits them and returns the commit's hash."""
    git = ['git', '-C', str(root), '-c', 'user.name=t', '-c', 'user.email=t@t']
    if not (root / '.git').exists():
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(git + ['init', '-q'], check=True)
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    subprocess.run(git + ['add', '.'], check=True)
    subprocess.run(git + ['commit', '-q', '-m', 'a commit'], check=True)
    return subprocess.run(git + ['rev-parse', 'HEAD'], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path):
    """A checkout with two commits of a small package: 'first' and 'second'."""
    root = tmp_path / 'checkout'
    package = {'ffcv_imagenet/__init__.py': '',
               'ffcv_imagenet/data/__init__.py': '',
               'ffcv_imagenet/data/loaders.py': 'from .version import WHICH\n'}
    first = _commit(root, {**package, 'ffcv_imagenet/data/version.py': "WHICH = 'first'\n"})
    second = _commit(root, {'ffcv_imagenet/data/version.py': "WHICH = 'second'\n"})
    yield root, first, second
    for name in [name for name in sys.modules if name.startswith('ffcv_imagenet_')]:
        del sys.modules[name]


def test_a_revision_is_imported_under_its_own_name_and_reads_its_own_code(checkout,
                                                                          tmp_path):
    root, first, second = checkout
    into = tmp_path / 'into'
    into.mkdir()
    old, short = revision.import_revision(first[:7], into, root=root)
    new, _ = revision.import_revision('HEAD', into, root=root)
    assert short == first[:10]
    assert old.__name__ == f'ffcv_imagenet_{first[:10]}.data.loaders'
    # each copy's relative imports reach its own files, not the running package's
    assert (old.WHICH, new.WHICH) == ('first', 'second')
    assert str(into) not in sys.path
    # imported again (the folder already holds it): the same module
    assert revision.import_revision(first, into, root=root)[0] is old


def test_a_root_below_the_top_of_the_checkout_reads_the_same_revision(checkout, tmp_path):
    root, first, _ = checkout
    module, short = revision.import_revision(first, tmp_path, root=root / 'ffcv_imagenet')
    assert (module.WHICH, short) == ('first', first[:10])


def test_bad_revisions_are_refused_in_one_line(checkout, tmp_path):
    root, _, _ = checkout
    with pytest.raises(ValueError, match=r"'nope' names no commit of the checkout at"):
        revision.import_revision('nope', tmp_path, root=root)
    plain = tmp_path / 'plain'
    plain.mkdir()
    with pytest.raises(ValueError, match='not a git repository'):
        revision.import_revision('HEAD', tmp_path, root=plain)
    built = _commit(root, {'ffcv_imagenet/data/fast.c': 'int x;\n'})
    with pytest.raises(ValueError, match=r'builds a C extension \(ffcv_imagenet/data/fast.c\)'):
        revision.import_revision(built, tmp_path, root=root)
    other = tmp_path / 'other'
    _commit(other, {'README': 'no package here\n'})
    with pytest.raises(ValueError, match=r'\(\w{10}\) has no ffcv_imagenet/ at the top'):
        revision.import_revision('HEAD', tmp_path, root=other)


PURE_PYTHON = '5aecb75'  # a revision whose loader is pure Python (no C extension)


@pytest.mark.slow
def test_an_older_loader_of_this_project_runs_beside_todays(betons, tmp_path):
    import torch
    from ffcv_imagenet.data.read import decoders, loaders
    root = revision.checkout_root()
    known = subprocess.run(['git', '-C', str(root), 'cat-file', '-e',
                            f'{PURE_PYTHON}^{{commit}}'], capture_output=True)
    if known.returncode:
        pytest.skip(f'needs a git checkout that holds {PURE_PYTHON}')
    try:
        older, short = revision.import_revision(PURE_PYTHON, tmp_path)
        old = older.train_loader(str(betons[0]), batch_size=8, resolution=32,
                                 num_workers=2, decoder_dtype=torch.uint8)
        new = loaders.train_loader(str(betons[0]), batch_size=8, resolution=32,
                                   num_workers=2, decoder_dtype=torch.uint8)
        # its own decoder, not today's, whose class it would share under one name
        old_decoders = sys.modules[f'ffcv_imagenet_{short}.data.decoders']
        assert old_decoders.FusedCropDecoder is not decoders.FusedCropDecoder
        for loader in (old, new):
            shapes = [tuple(images.shape) for images, _ in loader]
            assert shapes == [(8, 3, 32, 32)] * 6  # 48 images
    finally:
        for name in [name for name in sys.modules if name.startswith('ffcv_imagenet_')]:
            del sys.modules[name]
