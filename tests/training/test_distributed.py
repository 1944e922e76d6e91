"""torchrun's environment -> a process group, and each process's threads
(training/distributed.py)."""
import json
import os
import subprocess
import sys

import pytest
import torch.distributed as torch_dist

from ffcv_imagenet.training import distributed
from tests.support import ROOT, free_port


def test_one_process_under_torchrun_joins_a_process_group(monkeypatch):
    """torchrun --nproc_per_node=1 runs the DDP code path (NCCL on a GPU), not the
    plain one, so one GPU can check what eight will run."""
    from ffcv_imagenet.training import distributed
    for key, value in dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
                           MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(key, value)
    here = distributed.setup('cpu')
    try:
        assert here.enabled and here.world_size == 1
        assert torch_dist.is_initialized() and torch_dist.get_backend() == 'gloo'
    finally:
        distributed.cleanup()
    monkeypatch.delenv('MASTER_ADDR')
    assert not distributed.setup('cpu').enabled  # plain python: no group
    assert not torch_dist.is_initialized()


# --- threads per process -------------------------------------------------------------

@pytest.mark.parametrize('cores, ranks, device, decoding, torch_threads', [
    (64, 8, 'cuda', 7, 1),    # eight GPUs: 8 cores each, one for the main thread
    (128, 8, 'cuda', 15, 1),
    (12, 8, 'cuda', 1, 1),    # fewer cores than two per GPU: still one decoding thread
    (4, 8, 'cpu', 1, 1),      # more processes than cores
    (2, 2, 'cpu', 1, 1),
    (32, 4, 'cpu', 7, 8),     # a CPU process does the math on its whole share
    (16, 1, 'cpu', 15, 16),
])
def test_each_process_decodes_on_its_share_of_the_cores_less_one(cores, ranks, device,
                                                                 decoding, torch_threads):
    plan = distributed.plan_threads(cores, ranks, device)
    assert (plan.decoding, plan.torch) == (decoding, torch_threads)
    assert f"{cores} cores / {ranks} process(es)" in plan.why


def test_threads_asked_for_win_over_the_share():
    plan = distributed.plan_threads(64, 8, 'cuda', decoding=12, omp_threads=3)
    assert (plan.decoding, plan.torch) == (12, 3)
    assert 'as asked' in plan.why and 'OMP_NUM_THREADS' in plan.why
    assert distributed.plan_threads(64, 8, 'cpu', omp_threads=1).torch == 1


@pytest.mark.parametrize('arguments', [
    dict(cores=0, local_ranks=1), dict(cores=8, local_ranks=0),
    dict(cores=8, local_ranks=1, decoding=-1), dict(cores=8, local_ranks=1, omp_threads=0)])
def test_impossible_thread_counts_are_refused(arguments):
    with pytest.raises(ValueError):
        distributed.plan_threads(device_type='cpu', **arguments)


def test_the_cores_are_shared_by_the_processes_that_may_run_on_them():
    every = set(range(128))
    assert distributed.shared_cores(every, [every] * 8) == (128, 8)
    # bound per NUMA node (numactl --cpunodebind, torchrun --numa-binding=node): four
    # processes on each node's 64 cores
    nodes = [set(range(64)), set(range(64, 128))]
    assert distributed.shared_cores(nodes[1], [nodes[0]] * 4 + [nodes[1]] * 4) == (64, 4)
    # cores of their own (torchrun --numa-binding=exclusive)
    own = [set(range(16 * rank, 16 * rank + 16)) for rank in range(8)]
    assert distributed.shared_cores(own[3], own) == (16, 1)


def test_a_plain_process_takes_the_cores_it_may_run_on(monkeypatch):
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    cores = len(os.sched_getaffinity(0))
    plan = distributed.process_threads('cpu')
    assert (plan.decoding, plan.torch) == (max(1, cores - 1), cores)
    monkeypatch.setenv('OMP_NUM_THREADS', '3')
    assert distributed.process_threads('cuda', decoding=5)[:2] == (5, 3)
    monkeypatch.setenv('OMP_NUM_THREADS', 'four')
    with pytest.raises(ValueError, match='OMP_NUM_THREADS'):
        distributed.process_threads('cpu')


# each rank chooses its threads as the train command does, then again bound to a core
# of its own; prints what it got
RANK_THREADS = """
import json, os, torch
from ffcv_imagenet.cli.recipe import setup_threads
from ffcv_imagenet.training import distributed
here = distributed.setup('cpu')
plan = setup_threads({'data.num_workers': 0}, here)
result = dict(decoding=plan.decoding, torch=torch.get_num_threads(),
              omp=os.environ.get('OMP_NUM_THREADS'))
cpus = sorted(os.sched_getaffinity(0))
os.sched_setaffinity(0, {cpus[here.local_rank % len(cpus)]})
result['bound'] = distributed.shared_cores(distributed.usable_cpus(),
                                           distributed.node_cpu_sets())
# one write of a short line to a pipe is atomic: the ranks' lines cannot interleave
os.write(1, f'THREADS {json.dumps(result)}\\n'.encode())
distributed.cleanup()
"""


@pytest.mark.slow
def test_two_local_ranks_under_torchrun_each_take_half_the_cores(tmp_path):
    script = tmp_path / 'rank_threads.py'
    script.write_text(RANK_THREADS)
    env = {key: value for key, value in os.environ.items() if key != 'OMP_NUM_THREADS'}
    env['PYTHONPATH'] = str(ROOT)
    done = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
         '--standalone', str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results = [json.loads(line.split(' ', 1)[1]) for line in done.stdout.splitlines()
               if line.startswith('THREADS ')]
    cores = len(os.sched_getaffinity(0))
    assert len(results) == 2
    for result in results:
        assert result['decoding'] == max(1, cores // 2 - 1)
        # torchrun sets OMP_NUM_THREADS=1 for several processes per node when it is not
        # set, and an OMP_NUM_THREADS is kept as given
        assert result['omp'] == '1' and result['torch'] == 1
        # bound to a core each (a different one wherever there are two): no sharing
        assert result['bound'] == [1, 1 if cores > 1 else 2]
