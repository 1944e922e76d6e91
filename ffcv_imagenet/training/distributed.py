"""torchrun environment -> process group, and the few collective helpers the loop needs.

``torchrun`` sets RANK, LOCAL_RANK and WORLD_SIZE (plus the rendezvous variables);
a plain ``python`` run has none of them and is a world of one, with no process
group at all. GPUs use NCCL and one device per local rank; CPUs use gloo.

Threads: each process decodes on its loader's threads while its main thread drives
the model; :func:`plan_threads` shares the node's cores out between the processes on
it so that eight ranks do not each start a thread per core.
"""
from __future__ import annotations

import contextlib
import datetime
import inspect
import os
import socket
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP


@dataclass(frozen=True)
class Dist:
    """Where this process sits: ``rank`` of ``world_size``, on ``device``;
    ``launched``: started by torchrun (a process group is joined even for one
    process, so that ``--nproc_per_node=1`` runs the same DDP and NCCL code as eight)."""
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    launched: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether there is a process group: DDP, sharded loaders, reductions."""
        return self.world_size > 1 or self.launched


def select_device(device: str = 'auto', local_rank: int = 0) -> torch.device:
    """'auto' (the local rank's GPU when CUDA is available, else the CPU), 'cuda' or
    'cpu'; a GPU is made current, with cuDNN's autotuner on (shapes are fixed:
    drop_last and a few resolutions).

    Raises:
        ValueError: 'cuda' asked for where there is none, or an unknown device name.
    """
    if device not in ('auto', 'cuda', 'cpu'):
        raise ValueError(f"device must be auto, cuda or cpu, got {device!r}")
    use_cuda = device == 'cuda' or (device == 'auto' and torch.cuda.is_available())
    if not use_cuda:
        return torch.device('cpu')
    if not torch.cuda.is_available():
        raise ValueError("device is 'cuda' but no CUDA GPU is available")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"local rank {local_rank} has no GPU: only "
                         f"{torch.cuda.device_count()} visible")
    torch.cuda.set_device(local_rank)
    torch.backends.cudnn.benchmark = True
    return torch.device('cuda', local_rank)


# seconds a collective waits for the other processes before it fails: long enough for
# a rank's first-step compilation and rank 0's checkpoint write, short enough that a
# frozen node (a hung process, a stalled file system) does not hold the others long
COLLECTIVE_TIMEOUT_S = 600.0


_joined_timeout_s: float | None = None  # of the process group this process joined


def collective_timeout_s() -> float | None:
    """The collective timeout (seconds) of the process group :func:`setup` joined;
    None when it joined none."""
    return _joined_timeout_s


def setup(device: str = 'auto', timeout_s: float = COLLECTIVE_TIMEOUT_S) -> Dist:
    """Joins the process group when launched by torchrun; picks the device.

    Args:
        device: as in :func:`select_device`.
        timeout_s: seconds a collective waits for the other processes before failing.
    Raises:
        ValueError: from :func:`select_device`.
    """
    rank = int(os.environ.get('RANK', 0))
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    launched = 'RANK' in os.environ and 'MASTER_ADDR' in os.environ  # torchrun sets both
    here = select_device(device, local_rank)
    use_cuda = here.type == 'cuda'
    if (world_size > 1 or launched) and not dist.is_initialized():
        global _joined_timeout_s
        _joined_timeout_s = timeout_s
        dist.init_process_group('nccl' if use_cuda else 'gloo',
                                timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=here if use_cuda else None)
    return Dist(rank, local_rank, world_size, here, launched)


# DDP's own default: gradients are all-reduced in buckets of this many MiB, each as soon
# as its gradients are ready, overlapping the rest of the backward pass
DDP_BUCKET_MB = 25.0


def _no_forward_buffer_sync() -> dict:
    """DDP's switch for the buffer broadcast before every forward: torch 2.14 renamed
    it (``forward_sync_buffers``; it keeps the one broadcast at start-up, which is
    wanted), older releases only know ``broadcast_buffers``."""
    if 'forward_sync_buffers' in inspect.signature(DDP.__init__).parameters:
        return {'forward_sync_buffers': False}
    return {'broadcast_buffers': False}


def wrap_ddp(module: torch.nn.Module, device: torch.device,
             bucket_mb: float = DDP_BUCKET_MB) -> DDP:
    """``module`` (already on ``device``) in DDP as training uses it: BN buffers are
    agreed across ranks before validation and saving (:func:`broadcast_buffers`), so no
    broadcast before every forward; gradients are views into the buckets (no copy);
    buckets of ``bucket_mb`` MiB. Needs a process group."""
    device_ids = [device.index] if device.type == 'cuda' else None
    return DDP(module, device_ids=device_ids, gradient_as_bucket_view=True,
               bucket_cap_mb=bucket_mb, **_no_forward_buffer_sync())


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def process_group_of_one(device: torch.device) -> Iterator[None]:
    """A process group of this process alone (NCCL on a GPU, gloo on the CPU), for
    timing DDP's own cost without other ranks; left when the block ends."""
    dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo',
                            init_method=f'tcp://127.0.0.1:{free_port()}', rank=0,
                            world_size=1, device_id=device if device.type == 'cuda' else None)
    try:
        yield
    finally:
        dist.destroy_process_group()


# torch's threads on a GPU process: the GPU does the math, and idle OpenMP threads
# spin on the cores the decoding threads need
GPU_TORCH_THREADS = 1


class ThreadPlan(NamedTuple):
    """Threads for one process: ``decoding`` (the loader's), ``torch`` (torch's
    intra-op threads), and ``why``, a line saying where each number came from."""
    decoding: int
    torch: int
    why: str


def plan_threads(cores: int, local_ranks: int, device_type: str, *, decoding: int = 0,
                 omp_threads: int | None = None) -> ThreadPlan:
    """The threads of one of ``local_ranks`` processes sharing ``cores`` CPUs.

    The process's share is ``cores // local_ranks`` (at least 1). Decoding gets the
    share less the main thread's core (at least 1); torch gets
    :data:`GPU_TORCH_THREADS` on a GPU process and the whole share on a CPU one,
    whose main thread does the math.

    Args:
        decoding: decoding threads asked for (0: from the share).
        omp_threads: ``OMP_NUM_THREADS`` where set: torch's threads as given.
    Raises:
        ValueError: cores or local_ranks below 1, decoding below 0, omp_threads below 1.
    """
    if cores < 1 or local_ranks < 1:
        raise ValueError(f"cores and local ranks must be positive, got {cores} and "
                         f"{local_ranks}")
    if decoding < 0:
        raise ValueError(f"decoding threads must not be negative, got {decoding}")
    if omp_threads is not None and omp_threads < 1:
        raise ValueError(f"OMP_NUM_THREADS must be a positive whole number, got {omp_threads}")
    share = max(1, cores // local_ranks)
    split = f"{cores} cores / {local_ranks} process(es)"
    if decoding:
        decode_why = f"{decoding} decoding (as asked)"
    else:
        decoding = max(1, share - 1)
        decode_why = f"{decoding} decoding ({split} - 1 for the main thread)"
    if omp_threads is not None:
        torch_threads, torch_why = omp_threads, 'OMP_NUM_THREADS'
    elif device_type == 'cuda':
        torch_threads, torch_why = GPU_TORCH_THREADS, 'the GPU does the math'
    else:
        torch_threads, torch_why = share, f"{split}, on the CPU"
    return ThreadPlan(decoding, torch_threads,
                      f"{decode_why}, {torch_threads} torch ({torch_why})")


def shared_cores(own: set[int], node: list[set[int]]) -> tuple[int, int]:
    """(cores, processes): the CPUs this process may run on (``own``), and how many of
    the node's processes (their CPU sets ``node``, this one's among them) may run on
    any of those. Ranks bound to NUMA nodes or to cores of their own share less."""
    return len(own), max(1, sum(1 for other in node if other & own))


def usable_cpus() -> set[int]:
    """The CPUs this process may run on (taskset, cgroups, Slurm, numactl)."""
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # not on Linux
        return set(range(os.cpu_count() or 1))


def node_cpu_sets() -> list[set[int]]:
    """The CPU sets of the processes on this host, this one's included (every rank must
    call it; without a process group, this process's alone)."""
    own = usable_cpus()
    if not (dist.is_available() and dist.is_initialized()):
        return [own]
    host = socket.gethostname()
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, (host, sorted(own)))
    return [set(cpus) for name, cpus in everyone if name == host]


def process_threads(device_type: str, decoding: int = 0) -> ThreadPlan:
    """:func:`plan_threads` for this process: the CPUs it shares with the processes on
    its host (a collective under a process group) and ``OMP_NUM_THREADS``.
    Raises:
        ValueError: a bad ``decoding`` or ``OMP_NUM_THREADS``.
    """
    omp = os.environ.get('OMP_NUM_THREADS', '').strip()
    if omp and not omp.isdigit():
        raise ValueError(f"OMP_NUM_THREADS must be a positive whole number, got {omp!r}")
    cores, ranks = shared_cores(usable_cpus(), node_cpu_sets())
    return plan_threads(cores, ranks, device_type, decoding=decoding,
                        omp_threads=int(omp) if omp else None)


def cleanup() -> None:
    """Leaves the process group (safe to call when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place (a no-op in a world of one); returns the tensor."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(value: float, device: torch.device) -> float:
    """The largest ``value`` over ranks (every rank must call it)."""
    tensor = torch.tensor([value], device=device, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.item()


def weights_agree(module: torch.nn.Module) -> bool:
    """Whether every rank holds the same parameters and buffers in ``module``: each
    rank sums each tensor in float64, and the smallest and largest of each sum over the
    ranks must be equal (every rank must call it; True in a world of one)."""
    sums = torch.stack([tensor.detach().double().sum()
                        for tensor in module.state_dict().values()
                        if tensor.is_floating_point()])
    if not (dist.is_available() and dist.is_initialized()):
        return True
    low, high = sums.clone(), sums.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(torch.equal(low, high))


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copies rank 0's buffers (BatchNorm running statistics) to every rank: under DDP
    each rank's last forward pass updated its own, and validation and checkpoints
    must use the same ones."""
    if dist.is_available() and dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def broadcast_object(value, src: int = 0):
    """Rank ``src``'s ``value`` on every rank (a no-op in a world of one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
