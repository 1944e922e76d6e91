"""train_imagenet.py with one rank failing at one step, as an out-of-memory error
or a bad file in that rank's shard would: ``FAIL_RANK`` and ``FAIL_STEP`` (1-based)
pick where. For the test that a failing rank does not hang the others."""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ffcv_imagenet.cli.train import run  # noqa: E402
from ffcv_imagenet.training import loop  # noqa: E402

_real_step, _steps = loop.train_step, [0]


def _failing_step(*args, **kwargs):
    _steps[0] += 1
    if (os.environ['RANK'] == os.environ['FAIL_RANK']
            and _steps[0] == int(os.environ['FAIL_STEP'])):
        raise RuntimeError(f"simulated out of memory in rank {os.environ['RANK']}")
    return _real_step(*args, **kwargs)


loop.train_step = _failing_step
sys.exit(run(sys.argv[1:]))
