"""torchrun environment -> process group, and the few collective helpers the loop needs.

``torchrun`` sets RANK, LOCAL_RANK and WORLD_SIZE (plus the rendezvous variables);
a plain ``python`` run has none of them and is a world of one, with no process
group at all. GPUs use NCCL and one device per local rank; CPUs use gloo.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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


def setup(device: str = 'auto', timeout_minutes: float = 30.0) -> Dist:
    """Joins the process group when launched by torchrun; picks the device.

    Args:
        device: as in :func:`select_device`.
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
        dist.init_process_group('nccl' if use_cuda else 'gloo',
                                timeout=datetime.timedelta(minutes=timeout_minutes),
                                device_id=here if use_cuda else None)
    return Dist(rank, local_rank, world_size, here, launched)


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
