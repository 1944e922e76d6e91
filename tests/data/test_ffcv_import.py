"""import_ffcv: ffcv imported without numba's typed dict, numba left as it was."""
import subprocess
import sys

from ffcv_imagenet.data.ffcv_import import import_ffcv
from tests.support import ROOT

CHECK = '''
import sys
import numba.typed
from numba.typed.typeddict import Dict as TypedDict
{first}
import ffcv_imagenet.data.read  # imports ffcv through import_ffcv
import ffcv.fields.rgb_image as rgb_image
modes = rgb_image.IMAGE_MODES
print(type(modes).__name__, dict(modes) == {{'jpg': 0, 'raw': 1}},
      numba.typed.Dict is TypedDict, type(numba.typed.Dict()).__name__)
'''


def _run(first: str) -> list[str]:
    done = subprocess.run([sys.executable, '-c', CHECK.format(first=first)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split()


def test_the_read_side_imports_ffcv_with_a_plain_lookup_and_restores_numba():
    assert _run('') == ['dict', 'True', 'True', 'Dict']


def test_ffcv_imported_before_keeps_its_typed_lookup():
    assert _run('import ffcv') == ['Dict', 'True', 'True', 'Dict']


def test_a_second_call_changes_nothing():
    import ffcv.fields.rgb_image as rgb_image
    modes = rgb_image.IMAGE_MODES
    import_ffcv()
    assert rgb_image.IMAGE_MODES is modes and modes['raw'] == 1
