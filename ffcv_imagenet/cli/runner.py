"""How every command ends: errors a user can cause become one line on stderr and
an exit code, never a traceback; the process group is always left."""
from __future__ import annotations

import os
import sys
from typing import Callable

from ..data.folders import DatasetError
from ..training import distributed
from ..training.checkpoint import CheckpointError
from ..training.loop import NonFiniteLossError
from .config import ConfigError


def report(message: str) -> None:
    """Prints ``message`` to stderr once per run (rank 0), not once per process."""
    if int(os.environ.get('RANK', 0)) == 0:
        print(message, file=sys.stderr, flush=True)


def exit_code(main: Callable[[], int], interrupted: str = 'interrupted') -> int:
    """Runs a command's ``main`` and turns what a user can cause into one line and an
    exit code: 2 for a bad config, dataset or checkpoint, 1 for a non-finite loss, 130
    for Ctrl-C (reporting ``interrupted``); always leaves the process group."""
    try:
        return main()
    except (ConfigError, CheckpointError, DatasetError) as err:
        report(f"error: {err}")
        return 2
    except NonFiniteLossError as err:
        report(f"error: {err}")
        return 1
    except KeyboardInterrupt:
        report(interrupted)
        return 130
    finally:
        distributed.cleanup()
