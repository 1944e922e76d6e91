"""The training-side fixes made for the GPU path before its first GPU run, exercised
on the CPU: one validation pass for raw and EMA weights, cached EMA pairing, a
one-pass drop path, fused SGD, DDP without per-step buffer broadcasts, and a
configurable period for last.pt."""
import socket

import pytest
import torch
import torch.distributed as torch_dist
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import train_imagenet
from ffcv_imagenet.cli import recipe
from ffcv_imagenet.cli.config import parse_config
from ffcv_imagenet.cli.train_config import SECTIONS
from ffcv_imagenet.training import ema as ema_module
from ffcv_imagenet.training import evaluate as evaluation
from ffcv_imagenet.training import loop
from ffcv_imagenet.training.checkpoint import checkpoint_names, load_checkpoint
from ffcv_imagenet.training.distributed import Dist
from ffcv_imagenet.training.ema import ModelEMA
from ffcv_imagenet.training.models import DropPath, build_model
from ffcv_imagenet.training.optim import build_sgd, resolve_precision
from train_args import tiny_args

CPU = torch.device('cpu')


class CountingLoader:
    """A list of batches that counts how many it hands out."""

    def __init__(self, batches):
        self.batches, self.served = batches, 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            self.served += 1
            yield batch


def _batches(count=3, size=4, classes=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 32, 32, generator=generator),
             torch.randint(0, classes, (size,), generator=generator)) for _ in range(count)]


def test_validation_decodes_the_split_once_for_raw_and_ema_weights():
    torch.manual_seed(0)
    model = build_model('resnet18', 10)
    ema = ModelEMA(model, 0.9)
    with torch.no_grad():  # make the two sets of weights differ
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    precision = resolve_precision('off', CPU)
    loader = CountingLoader(_batches())
    both = evaluation.validate(model, ema, loader, precision=precision, tta=True, device=CPU)
    assert loader.served == len(loader)  # one pass, not one per set of weights
    alone = evaluation.evaluate([model], CountingLoader(_batches()), precision=precision,
                          tta=True, device=CPU)[0]
    averaged = evaluation.evaluate([ema.module], CountingLoader(_batches()), precision=precision,
                             tta=True, device=CPU)[0]
    for key in ('loss', 'top1', 'top5'):
        assert both[f'val_{key}'] == pytest.approx(alone[key])
        assert both[f'ema_val_{key}'] == pytest.approx(averaged[key])
    assert both['val_loss'] != pytest.approx(both['ema_val_loss'])


def test_ema_pairs_parameters_once_and_updates_with_foreach_ops(monkeypatch):
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    ema = ModelEMA(model, 0.5, buffers="copy")
    calls = []
    real = ema_module._matched
    monkeypatch.setattr(ema_module, '_matched', lambda *a: calls.append(a[-1]) or real(*a))
    copies = []
    real_copy = torch._foreach_copy_
    monkeypatch.setattr(torch, '_foreach_copy_', lambda *a: copies.append(1) or real_copy(*a))
    for step in range(1, 6):
        with torch.no_grad():
            model[0].weight.add_(1.0)
            model[1].running_mean.add_(1.0)
        ema.update(model, step)
    assert calls == ['parameter', 'buffer']  # matched at the first update only
    assert len(copies) == 5  # one foreach copy of all buffers per update
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)
    # a model whose buffer object was replaced is seen again at the next explicit copy
    model[1].running_mean = torch.full((4,), 7.0)
    ema.copy_buffers(model)
    assert torch.equal(ema.module[1].running_mean, torch.full((4,), 7.0))


class FullSizeOps(TorchDispatchMode):
    """Records the ops whose output is as large as ``numel``."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.ops = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.numel() == self.numel:
            self.ops.append(str(func))
        return out


def test_drop_path_makes_one_pass_over_the_activations():
    x = torch.randn(8, 16, 5, 5)
    layer = DropPath(0.3).train()
    torch.manual_seed(1)
    with FullSizeOps(x.numel()) as recorded:
        y = layer(x)
    assert len(recorded.ops) == 1, recorded.ops
    torch.manual_seed(1)
    mask = x.new_empty((8, 1, 1, 1)).bernoulli_(0.7)
    assert torch.allclose(y, x * mask / 0.7)


def test_fused_sgd_steps_like_the_plain_one():
    torch.manual_seed(0)
    plain_model = build_model('resnet18', 10)
    fused_model = build_model('resnet18', 10)
    fused_model.load_state_dict(plain_model.state_dict())
    plain = build_sgd(plain_model, lr=0.1, momentum=0.9, weight_decay=1e-4)
    fused = build_sgd(fused_model, lr=0.1, momentum=0.9, weight_decay=1e-4, fused=True)
    assert all(group['fused'] for group in fused.param_groups)
    assert not any(group['fused'] for group in plain.param_groups)
    images, labels = _batches(1, size=4)[0]
    for model, optimizer in ((plain_model, plain), (fused_model, fused)):
        for _ in range(2):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
    for a, b in zip(plain_model.parameters(), fused_model.parameters()):
        assert torch.allclose(a, b, atol=1e-5)


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_ddp_neither_broadcasts_buffers_nor_copies_gradients(betons, tmp_path):
    config = parse_config('t', tiny_args(betons, tmp_path), SECTIONS)
    torch_dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{_free_port()}',
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


@pytest.mark.parametrize('epoch, kwargs, names', [
    (1, dict(last_due=True), ['last.pt']),
    (1, dict(last_due=False), []),
    (2, dict(last_due=False, improved=True), ['best.pt']),
    (4, dict(last_due=True, improved=True, keep_every=2), ['last.pt', 'best.pt',
                                                           'epoch_0004.pt']),
    (3, dict(last_due=False, finished=True), ['last.pt', 'final.pt']),
])
def test_checkpoint_names_due_after_an_epoch(epoch, kwargs, names):
    settings = {**dict(improved=False, keep_every=0, last_due=False, finished=False), **kwargs}
    assert checkpoint_names(epoch, **settings) == names


def test_last_checkpoint_period_is_a_setting(betons, tmp_path, monkeypatch):
    written = []
    real = loop.save_checkpoints
    monkeypatch.setattr(loop, 'save_checkpoints',
                        lambda folder, saved, names: written.append(
                            (saved['epoch'], names)) or real(folder, saved, names))
    folder = tmp_path / 'run'
    assert train_imagenet.main(tiny_args(betons, folder, '--training.epochs=3',
                                         '--checkpoint.last_every=2',
                                         '--validation.every=5')) == 0
    assert written == [(2, ['last.pt']), (3, ['last.pt', 'best.pt', 'final.pt'])]
    assert load_checkpoint(folder / 'checkpoints' / 'last.pt')['epoch'] == 3
    with pytest.raises(Exception, match='checkpoint.last_every: expected a positive'):
        train_imagenet.main(tiny_args(betons, tmp_path / 'bad', '--checkpoint.last_every=0'))


def test_one_process_under_torchrun_joins_a_process_group(monkeypatch):
    """torchrun --nproc_per_node=1 runs the DDP code path (NCCL on a GPU), not the
    plain one, so one GPU can check what eight will run."""
    from ffcv_imagenet.training import distributed
    for key, value in dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
                           MASTER_PORT=str(_free_port())).items():
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
