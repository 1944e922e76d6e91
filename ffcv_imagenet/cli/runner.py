"""How every command ends: errors a user can cause become one line on stderr and
an exit code, never a traceback; the process group is always left.

Under torchrun an error is printed once. Rank 0 prints at once. Another rank waits
:data:`PEER_GRACE` seconds first: when the error is one every rank meets (a bad
config or file), rank 0 exits meanwhile and torchrun stops the others, so only
rank 0's line appears; when the error is this rank's alone (a bad file in its shard,
out of memory), nobody stops it and it prints its own line, naming the rank. A rank
whose collective fails because another rank died says so in one line instead of a
second traceback; one whose collective waits past the group's timeout for a process
that stopped answering (a frozen node) says that.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable

import torch.distributed as torch_dist

from ..data.folders import DatasetError
from ..data.messages import error_line
from ..training import distributed
from ..training.checkpoint import CheckpointError
from ..training.loop import NonFiniteLossError
from .config import ConfigError

PEER_GRACE = 5.0  # seconds; torchrun notices a worker's exit within a fraction of one


def _rank() -> tuple[int, int]:
    return int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))


def report(message: str) -> None:
    """Prints ``message`` to stderr once per run (rank 0), not once per process."""
    if _rank()[0] == 0:
        print(message, file=sys.stderr, flush=True)


def report_error(message: str) -> None:
    """Prints an error once per run, wherever it happened (see the module docstring)."""
    rank, world_size = _rank()
    if rank == 0:
        print(message, file=sys.stderr, flush=True)
        return
    time.sleep(PEER_GRACE)  # torchrun ends this process here if rank 0 failed too
    print(f"[rank {rank}/{world_size}] {message}", file=sys.stderr, flush=True)


def _timed_out(err: BaseException) -> bool:
    """Whether ``err`` is a collective that waited past the process group's timeout
    (gloo says 'Timed out waiting', NCCL 'timeout')."""
    text = str(err).lower()
    return 'timed out' in text or 'timeout' in text


def _peer_failed(err: BaseException) -> bool:
    """Whether ``err`` is a collective failing because another process went away."""
    if isinstance(err, torch_dist.DistError):
        return True
    text = str(err).lower()
    return any(sign in text for sign in ('connection closed by peer', 'connection reset',
                                         'broken pipe', 'socket closed'))


def exit_code(main: Callable[[], int], interrupted: str = 'interrupted') -> int:
    """Runs a command's ``main`` and turns what a user can cause into one line and an
    exit code: 2 for a bad config, dataset or checkpoint, 1 for a non-finite loss or
    another rank's failure, 130 for Ctrl-C (reporting ``interrupted``); always leaves
    the process group."""
    try:
        return main()
    except (ConfigError, CheckpointError, DatasetError) as err:
        report_error(f"error: {err}")
        return 2
    except NonFiniteLossError as err:
        report(f"error: {err}")
        return 1
    except KeyboardInterrupt:
        report(interrupted)
        return 130
    except RuntimeError as err:
        first = error_line(err)
        if _rank()[1] > 1 and _timed_out(err):
            waited = distributed.collective_timeout_s()
            report_error(f"stopped: another process of this job did not answer for "
                         f"{f'{waited:g} s' if waited else 'the timeout'} "
                         f"(training.collective_timeout_s): it, or its node, is frozen or "
                         f"hung ({first})")
            return 1
        if _rank()[1] > 1 and _peer_failed(err):
            report_error(f"stopped: lost another process of this job (it failed, or its "
                         f"node went down) ({first})")
            return 1
        raise
    finally:
        distributed.cleanup()
