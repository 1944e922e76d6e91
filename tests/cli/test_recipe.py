"""A config -> a built run (cli/recipe.py): under DDP the model neither broadcasts its
buffers nor copies its gradients; training.parity=ffcv reaches the run's optimizer,
learning rate, precision and notes."""
import pytest
import torch
import torch.distributed as torch_dist
from torch import nn

from ffcv_imagenet.cli import recipe
from ffcv_imagenet.cli.config import parse_config
from ffcv_imagenet.cli.train_config import SECTIONS
from ffcv_imagenet.training.distributed import Dist
from ffcv_imagenet.training.optim import resolve_precision
from tests.support import free_port, tiny_args


CPU = torch.device('cpu')


def test_ddp_neither_broadcasts_buffers_nor_copies_gradients(betons, tmp_path):
    config = parse_config('t', tiny_args(betons, tmp_path), SECTIONS)
    torch_dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{free_port()}',
                                  rank=0, world_size=1)
    try:
        dist = Dist(rank=0, local_rank=0, world_size=2, device=CPU)  # "enabled" path
        model, module, optimizer, _ = recipe._network(config, dist,
                                                      resolve_precision('off', CPU), 4)
    finally:
        torch_dist.destroy_process_group()
    assert isinstance(model, nn.parallel.DistributedDataParallel)
    assert getattr(model, 'forward_sync_buffers', model.broadcast_buffers) is False
    assert model.gradient_as_bucket_view is True
    assert not any(group['fused'] for group in optimizer.param_groups)  # CPU: plain SGD


def test_a_parity_run_is_built_with_the_published_rules_and_says_so(betons, tmp_path):
    config = parse_config('t', tiny_args(betons, tmp_path, '--training.parity=ffcv'), SECTIONS)
    run = recipe.build_run(config, Dist(rank=0, local_rank=0, world_size=1, device=CPU))
    names = {id(p): n for n, p in run.module.named_parameters()}
    decay, exempt = run.optimizer.param_groups
    assert {names[id(p)] for p in decay['params']} == {n for n in names.values()
                                                       if 'bn' not in n}
    assert 'fc.bias' in {names[id(p)] for p in decay['params']}
    assert run.precision.dtype is None  # fp16 needs a GPU: full precision on the CPU
    peak = config['lr.lr'] * 8 / config['lr.reference_batch']  # tiny_args: batch 8
    assert run.lr_at(0) == pytest.approx(1e-4 * peak)
    (note,) = [n for n in run.notes if n.startswith('training.parity=ffcv sets ')]
    assert 'optimizer.decay_rule=names' in note and 'training.precision=fp16' in note
    assert run.meta['config']['optimizer.decay_rule'] == 'names'  # saved with checkpoints
