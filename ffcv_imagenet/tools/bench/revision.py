"""Another git revision of this package, imported beside the running one, so that a
benchmark can time an older loader against today's in the same process and minutes
(``bench loader --reference REV``).

The revision's ``ffcv_imagenet/`` is exported with ``git archive`` from the checkout
this package runs from, into a folder where it is named ``ffcv_imagenet_<commit>``:
its modules import each other relatively, so the copy reads its own code, never this
one's. Revisions with a compiled extension of their own cannot be imported this way
(the archive holds its C source, not a build); they are refused with a one-line error.
"""
from __future__ import annotations

import importlib
import io
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

PACKAGE = 'ffcv_imagenet'


def checkout_root() -> Path:
    """The folder holding this package: a git checkout when installed editable."""
    return Path(__file__).resolve().parents[3]  # ffcv_imagenet/tools/bench/revision.py


def _git(root: Path, *args: str) -> bytes:
    try:
        done = subprocess.run(['git', '-C', str(root), *args], capture_output=True,
                              check=False)
    except FileNotFoundError:
        raise ValueError("git is not installed: another revision cannot be read") from None
    if done.returncode:
        message = done.stderr.decode(errors='replace').strip().splitlines()
        raise ValueError(f"git {' '.join(args)} in {root}: "
                         f"{message[-1] if message else 'failed'}")
    return done.stdout


# every pure-Python revision keeps its loaders at data/loaders.py (data/ was split into
# write/ and read/ only after the C extension came, which refuses a revision anyway)
def import_revision(revision: str, into: str | Path, module: str = 'data.loaders',
                    root: str | Path | None = None) -> tuple[ModuleType, str]:
    """Exports ``revision`` (any git name of a commit) of the package from the checkout
    at ``root`` (default: :func:`checkout_root`) into the folder ``into``, imports its
    ``module`` and returns (the module, the commit's 10-character hash).

    Raises:
        ValueError: no git, ``root`` is not in a checkout, ``revision`` names no
            commit, the commit has no ``ffcv_imagenet/`` at the top of the checkout, or
            it carries a C extension.
    """
    # git archive names paths from the top of the checkout, wherever root lies in it
    root = Path(_git(Path(root) if root is not None else checkout_root(),
                     'rev-parse', '--show-toplevel').decode().strip())
    try:
        commit = _git(root, 'rev-parse', '--verify', '--quiet', f'{revision}^{{commit}}'
                      ).decode().strip()
    except ValueError:
        raise ValueError(f"{revision!r} names no commit of the checkout at {root}") from None
    short = commit[:10]
    name = f'{PACKAGE}_{short}'
    folder = Path(into)
    if not (folder / name).is_dir():
        if not _git(root, 'ls-tree', '--name-only', commit, PACKAGE).strip():
            raise ValueError(f"revision {revision} ({short}) has no {PACKAGE}/ at the top "
                             f"of the checkout at {root}")
        archive = _git(root, 'archive', '--format=tar', commit, PACKAGE)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            members = tar.getmembers()
            extensions = [m.name for m in members if m.name.endswith('.c')]
            if extensions:
                raise ValueError(f"revision {revision} ({short}) builds a C extension "
                                 f"({extensions[0]}): only pure-Python revisions can be "
                                 f"imported beside this one")
            staging = folder / f'.{name}.partial'
            # (the filter, which refuses links out of the folder, came in Python 3.11.4)
            safe = {'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}
            tar.extractall(staging, **safe)
        (staging / PACKAGE).rename(folder / name)
        staging.rmdir()
    importlib.invalidate_caches()  # the finders may have listed the folder before
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(f'{name}.{module}'), short
    finally:
        # the package's own imports go through its __path__ from here on
        sys.path.remove(str(folder))
