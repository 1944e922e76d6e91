"""torchrun's environment -> a process group (training/distributed.py)."""
import torch.distributed as torch_dist

from tests.support import free_port


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
