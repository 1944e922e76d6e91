"""The network a config builds (cli/network.py): under DDP the model neither
broadcasts its buffers nor copies its gradients; with model.compile each shape of a
run, training's and validation's, is compiled once, however often it comes back;
a compile mode the backend cannot take is refused in one line."""
import pytest
import torch
import torch.distributed as torch_dist
from torch import nn

import train_imagenet
from ffcv_imagenet.cli import network
from ffcv_imagenet.cli.config import ConfigError, parse_config
from ffcv_imagenet.cli.train_config import SECTIONS, check_values
from ffcv_imagenet.training.distributed import Dist
from ffcv_imagenet.training.optim import resolve_precision
from ffcv_imagenet.training.logs import read_log
from tests.support import free_port, tiny_args

CPU = torch.device('cpu')


def test_ddp_neither_broadcasts_buffers_nor_copies_gradients(betons, tmp_path):
    config = parse_config('t', tiny_args(betons, tmp_path), SECTIONS)
    torch_dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{free_port()}',
                                  rank=0, world_size=1)
    try:
        dist = Dist(rank=0, local_rank=0, world_size=2, device=CPU)  # "enabled" path
        model, module, optimizer, _ = network.build_network(
            config, dist, resolve_precision('off', CPU), 4)
    finally:
        torch_dist.destroy_process_group()
    assert isinstance(model, nn.parallel.DistributedDataParallel)
    assert getattr(model, 'forward_sync_buffers', model.broadcast_buffers) is False
    assert model.gradient_as_bucket_view is True
    assert not any(group['fused'] for group in optimizer.param_groups)  # CPU: plain SGD


@pytest.mark.slow
def test_a_compiled_run_compiles_each_shape_once_however_often_it_comes_back(betons,
                                                                            tmp_path):
    # 3 epochs at 32, 32, 64 px, validated after each with a partial last batch (20
    # images in batches of 8), the EMA's forward beside the raw one; dynamo's eager
    # backend: the same tracing and guards as inductor, without its code generation
    folder = tmp_path / 'run'
    assert train_imagenet.main(tiny_args(
        betons, folder, '--model.compile=1', '--model.compile_backend=eager',
        '--training.epochs=3', '--resolution.start_ramp=1', '--resolution.end_ramp=2',
        '--ema.enabled=1', '--ema.decay=0.9')) == 0
    epochs = read_log(folder, 'epoch')
    assert [e['resolution'] for e in epochs] == [32, 32, 64]
    # epoch 1: training at 32 px, validation of the raw weights and of the EMA's (its
    # own graph: its weights take no gradients); epoch 2 meets all three again; epoch 3
    # adds training at 64 px
    assert [e['graphs_compiled'] for e in epochs] == [3, 0, 1]
    assert all(0 <= e['val_top1'] <= 1 and 0 <= e['ema_val_top1'] <= 1 for e in epochs)


def test_a_compile_mode_the_backend_cannot_take_is_refused_in_one_line(betons, tmp_path):
    config = parse_config('t', tiny_args(betons, tmp_path, '--model.compile=1',
                                         '--model.compile_mode=reduce-overhead',
                                         '--model.compile_backend=eager'), SECTIONS)
    with pytest.raises(ConfigError, match='model.compile_mode=reduce-overhead needs '
                                          'model.compile_backend=inductor, not eager'):
        check_values(config)
