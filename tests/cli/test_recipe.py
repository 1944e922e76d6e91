"""A config -> a built run (cli/recipe.py): under DDP the model neither broadcasts its
buffers nor copies its gradients."""
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


def test_data_dct_scaling_reaches_the_train_loaders_decoder(betons, tmp_path):
    dist = Dist(rank=0, local_rank=0, world_size=1, device=CPU)
    for flag in (0, 1):
        config = parse_config('t', tiny_args(betons, tmp_path, f'--data.dct_scaling={flag}'),
                              SECTIONS)
        train, val = recipe._loaders(config, dist, resolve_precision('off', CPU), *betons,
                                     8, None)
        assert train.decoder.dct_scaling is bool(flag)
        assert val.decoder.dct_scaling is False  # validation decodes at full size
    default = parse_config('t', tiny_args(betons, tmp_path), SECTIONS)
    assert default['data.dct_scaling'] == 0
