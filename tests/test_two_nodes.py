"""A two-node rehearsal on one machine: two torchrun launchers started as two nodes
would be (c10d rendezvous, one CPU process each, gloo) train one run into one folder
(as on shared storage). Each epoch is logged once and the ranks end with the same
weights; when one node dies (its launcher and worker killed) or freezes (stopped), the
other ends within a bounded time with one line saying what happened, and both
relaunched with resume=auto end with the weights of an unbroken run."""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from ffcv_imagenet.training.checkpoint import checkpoint_dir
from ffcv_imagenet.training.logs import read_log
from tests.support import ROOT, assert_same_weights, free_port, tiny_args, weights

# one worker runs them all, so that the unbroken run is made once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group('two_nodes')]

EPOCHS = 2
# short, so that the frozen case ends soon; the unbroken run never comes near it
TIMEOUT_S = 15


def _launcher(node: int, port: int, betons, folder, log, *extra) -> subprocess.Popen:
    args = tiny_args(betons, folder, f'--training.epochs={EPOCHS}', '--checkpoint.resume=auto',
                     f'--training.collective_timeout_s={TIMEOUT_S}', *extra)
    command = [sys.executable, '-m', 'torch.distributed.run', '--nnodes=2',
               f'--node_rank={node}', '--nproc_per_node=1', '--rdzv_backend=c10d',
               f'--rdzv_endpoint=127.0.0.1:{port}', '--rdzv_id=rehearsal',
               '-m', 'ffcv_imagenet', 'train', *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(('127.0.0.1', port)) == 0


def two_nodes(betons, folder, logs) -> tuple[subprocess.Popen, subprocess.Popen]:
    """Node 0 first, so that its launcher hosts the rendezvous (as the first node of a
    cluster does), then node 1. ``logs``: a folder for each node's output."""
    port = free_port()
    outputs = [open(logs / f'node{node}.log', 'ab') for node in (0, 1)]
    first = _launcher(0, port, betons, folder, outputs[0])
    deadline = time.monotonic() + 60
    while not _listening(port):
        assert first.poll() is None and time.monotonic() < deadline, 'node 0 did not start'
        time.sleep(0.1)
    return first, _launcher(1, port, betons, folder, outputs[1])


def finish(processes, seconds=240):
    return [process.wait(timeout=seconds) for process in processes]


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants: torchrun starts each worker in a session of its
    own, so a node's processes are not one process group."""
    found = [pid]
    for task in os.listdir(f'/proc/{pid}/task'):
        with open(f'/proc/{pid}/task/{task}/children') as handle:
            for child in handle.read().split():
                found += process_tree(int(child))
    return found


def signal_all(pids: list[int], sent: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.kill(pid, sent)


def wait_for(folder, event: str, count: int, processes, seconds=180):
    """Until ``log.jsonl`` holds ``count`` lines of ``event``."""
    deadline = time.monotonic() + seconds
    while not ((folder / 'log.jsonl').exists() and len(read_log(folder, event)) >= count):
        assert all(p.poll() is None for p in processes), 'a node ended early'
        assert time.monotonic() < deadline, f'no {count} {event} lines after {seconds} s'
        time.sleep(0.1)


@pytest.fixture(scope='module')
def unbroken(betons, tmp_path_factory):
    logs = tmp_path_factory.mktemp('unbroken')
    folder = logs / 'run'
    assert finish(two_nodes(betons, folder, logs)) == [0, 0], (logs / 'node0.log').read_text()
    return folder


def test_two_nodes_train_one_run_logged_once_with_the_same_weights_on_both(unbroken):
    assert [record["epoch"] for record in read_log(unbroken, "epoch")] == [1, 2]
    (start,), (end,) = read_log(unbroken, 'start'), read_log(unbroken, 'end')
    assert start['world_size'] == 2
    assert end['ranks_agree'] is True  # every parameter and buffer, summed on each rank
    assert {path.name for path in checkpoint_dir(unbroken).iterdir()} == {
        'last.pt', 'best.pt', 'final.pt'}  # and no temporary file of a second writer


def stop_a_node(folder, first, second, sent: int, within: float, tmp_path) -> str:
    """Sends ``sent`` to every process of node 1 and returns the 'stopped:' line of
    node 0, which must end non-zero within ``within`` seconds; node 1 is then killed."""
    node = process_tree(second.pid)
    began = time.monotonic()
    signal_all(node, sent)
    code = first.wait(timeout=within + 60)
    took = time.monotonic() - began
    signal_all(node, signal.SIGKILL)  # a frozen node is killed for good now
    second.wait(timeout=30)
    output = (tmp_path / 'node0.log').read_text()
    assert code != 0 and took < within, (code, took, output[-3000:])
    stops = [line for line in output.splitlines() if line.startswith('stopped:')]
    (tmp_path / 'node0.log').unlink()  # the next launch's output starts afresh
    assert len(stops) == 1, stops
    return stops[0]


def test_a_frozen_node_then_a_dead_one_stop_the_other_and_both_resume_exactly(
        betons, tmp_path, unbroken):
    folder = tmp_path / 'run'
    # after the first epoch, node 1 freezes: node 0 waits the collective timeout
    first, second = two_nodes(betons, folder, tmp_path)
    wait_for(folder, 'epoch', 1, (first, second))
    line = stop_a_node(folder, first, second, signal.SIGSTOP, TIMEOUT_S + 30, tmp_path)
    assert line.startswith(f'stopped: another process of this job did not answer for '
                           f'{TIMEOUT_S} s (training.collective_timeout_s)'), line
    # both again, as a requeued job would, from the first epoch's checkpoint; as they
    # start the second epoch again, node 1 dies
    first, second = two_nodes(betons, folder, tmp_path)
    wait_for(folder, 'resume', 1, (first, second))
    line = stop_a_node(folder, first, second, signal.SIGKILL, 30, tmp_path)
    assert line.startswith('stopped: lost another process of this job'), line
    # and once more: from the last checkpoint to the end
    assert finish(two_nodes(betons, folder, tmp_path)) == [0, 0]
    assert len(read_log(folder, 'resume')) == 2
    assert [record['epoch'] for record in read_log(folder, 'epoch')][-1] == EPOCHS
    assert_same_weights(weights(checkpoint_dir(folder) / 'final.pt'),
                        weights(checkpoint_dir(unbroken) / 'final.pt'))
