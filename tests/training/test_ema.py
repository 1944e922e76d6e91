"""The moving average of the weights (training/ema.py): the recurrence, its period
and warm-up, buffers averaged or copied, fp32 whatever the model, exact resume, the
parameters paired once and updated with foreach ops."""
import math

import pytest
import torch
from torch import nn

from ffcv_imagenet.training import ema as ema_module
from ffcv_imagenet.training.ema import ModelEMA


def toy_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def train(model, opt, steps, ema=None, first_step=1, seed=1):
    """``steps`` SGD steps on random data; updates ``ema`` after each (global step)."""
    gen = torch.Generator().manual_seed(seed + first_step)
    updated = []
    for step in range(first_step, first_step + steps):
        x = torch.randn(8, 4, generator=gen)
        loss = model(x).pow(2).mean() + model[0].weight.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if ema is not None:
            updated.append(ema.update(model, step))
    return updated


def params(model):
    return {name: p.detach().clone().float() for name, p in model.named_parameters()}


def assert_close(ema, expected):
    got = dict(ema.module.named_parameters())
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6)


def test_update_follows_the_recurrence_every_step():
    model = toy_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ema = ModelEMA(model, 0.9)
    expected = params(model)
    gen = torch.Generator().manual_seed(5)
    for step in range(1, 6):
        loss = model(torch.randn(8, 4, generator=gen)).pow(2).mean() + model[0].weight.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert ema.update(model, step) is True
        for name, p in model.named_parameters():
            expected[name] = 0.9 * expected[name] + 0.1 * p.detach()
    assert_close(ema, expected)
    # Not trivially equal to the model nor to the initial weights.
    assert not torch.allclose(ema.module[0].weight, model[0].weight, atol=1e-3)


def test_every_updates_only_on_multiples_with_a_powered_decay():
    model = toy_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ema = ModelEMA(model, 0.9, every=3)
    expected = params(model)
    gen = torch.Generator().manual_seed(5)
    d = 0.9 ** 3
    for step in range(1, 8):
        loss = model(torch.randn(8, 4, generator=gen)).pow(2).mean() + model[0].weight.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        before = params(ema.module)
        updated = ema.update(model, step)
        assert updated is (step in (3, 6))
        if updated:
            for name, p in model.named_parameters():
                expected[name] = d * expected[name] + (1 - d) * p.detach()
        else:
            for name, p in ema.module.named_parameters():
                assert torch.equal(p, before[name])  # untouched
        assert_close(ema, expected)


def test_decay_at_with_and_without_warmup():
    model = toy_model()
    ema = ModelEMA(model, 0.999, warmup_steps=100)
    assert ema.decay_at(0) == 0.0
    assert ema.decay_at(100) == pytest.approx(0.999 * (1 - 1 / math.e))
    assert ema.decay_at(10_000) == pytest.approx(0.999, abs=1e-12)
    assert ema.decay_at(50) < ema.decay_at(100) < ema.decay_at(200)
    plain = ModelEMA(model, 0.999)
    assert plain.decay_at(0) == plain.decay_at(1) == plain.decay_at(10**6) == 0.999


def test_warmup_makes_the_first_update_follow_the_model():
    model = toy_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ema = ModelEMA(model, 0.9999, warmup_steps=1000)
    train(model, opt, 1, ema)
    d = 0.9999 * (1 - math.exp(-1 / 1000))  # about 1e-3
    for name, p in ema.module.named_parameters():
        torch.testing.assert_close(p, dict(model.named_parameters())[name].detach(),
                                   rtol=0, atol=2e-3)
    # Without warm-up the same step leaves the EMA at the initial weights.
    model2 = toy_model()
    init = params(model2)
    ema2 = ModelEMA(model2, 0.9999)
    train(model2, torch.optim.SGD(model2.parameters(), lr=0.5), 1, ema2)
    assert d < 2e-3
    assert not torch.allclose(ema2.module[0].weight, model2[0].weight, atol=1e-2)
    torch.testing.assert_close(ema2.module[0].weight, init['0.weight'], rtol=0, atol=1e-3)


def bn_buffers(module):
    return {name: b.clone() for name, b in module[1].named_buffers()}


def test_buffers_are_averaged_with_the_weights_by_default():
    """running_mean/var follow ema_b = d * ema_b + (1 - d) * b after every update,
    computed here by hand; the step count is copied."""
    model = toy_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = ModelEMA(model, 0.9, warmup_steps=3)
    expected = {k: v for k, v in bn_buffers(model).items() if v.is_floating_point()}
    for step in range(1, 5):
        train(model, opt, 1, ema, first_step=step)
        d = ema.decay_at(step)
        for name, value in bn_buffers(model).items():
            if name in expected:
                expected[name] = d * expected[name] + (1 - d) * value
        got = bn_buffers(ema.module)
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-7)
            assert not torch.equal(got[name], bn_buffers(model)[name]), name
        assert got['num_batches_tracked'].item() == step


def test_buffers_are_copied_not_averaged_on_request():
    model = toy_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = ModelEMA(model, 0.9, buffers='copy')
    train(model, opt, 4, ema)
    got, want = bn_buffers(ema.module), bn_buffers(model)
    assert set(got) == {'running_mean', 'running_var', 'num_batches_tracked'}
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert got['num_batches_tracked'].item() == 4
    assert got['num_batches_tracked'].dtype == torch.int64


def test_copy_buffers_copies_now():
    model = toy_model()
    ema = ModelEMA(model, 0.9, every=100, buffers='copy')
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 4))  # changes BN statistics only
    assert not torch.equal(ema.module[1].running_mean, model[1].running_mean)
    weight_before = ema.module[0].weight.clone()
    ema.copy_buffers(model)
    for name, b in bn_buffers(model).items():
        assert torch.equal(bn_buffers(ema.module)[name], b), name
    assert torch.equal(ema.module[0].weight, weight_before)  # parameters untouched


def test_ema_is_fp32_eval_and_frozen():
    model = toy_model()
    model.train()
    ema = ModelEMA(model, 0.9)
    assert not ema.module.training
    assert model.training  # the model itself is left alone
    for p in ema.module.parameters():
        assert p.dtype == torch.float32 and not p.requires_grad
    assert ema.module is not model and ema.module[0].weight is not model[0].weight


def test_bf16_model_gets_an_fp32_ema():
    model = toy_model().to(torch.bfloat16)
    ema = ModelEMA(model, 0.5)
    for t in ema.module.state_dict().values():
        assert t.dtype in (torch.float32, torch.int64)
    expected = params(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(0.25)
    assert ema.update(model, 1)
    for name, p in model.named_parameters():
        expected[name] = 0.5 * expected[name] + 0.5 * p.detach().float()
    assert_close(ema, expected)
    assert ema.module[1].running_mean.dtype == torch.float32
    # averaged from 0 with d = 0.5
    assert torch.equal(ema.module[1].running_mean, torch.full((3,), 0.125))


def test_resume_is_exact(tmp_path):
    n, m = 4, 3
    # Uninterrupted run.
    model = toy_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ema = ModelEMA(model, 0.8, warmup_steps=2)
    train(model, opt, n, ema, first_step=1)
    saved = {'model': model.state_dict(), 'opt': opt.state_dict(), 'ema': ema.state_dict()}
    torch.save(saved, tmp_path / 'ckpt.pt')
    train(model, opt, m, ema, first_step=n + 1)

    # Resumed run: fresh objects from another seed, then loaded.
    loaded = torch.load(tmp_path / 'ckpt.pt', weights_only=True)
    assert loaded['ema']['decay'] == 0.8 and loaded['ema']['every'] == 1
    assert loaded['ema']['warmup_steps'] == 2
    model2 = toy_model(seed=123)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    ema2 = ModelEMA(model2, 0.8, warmup_steps=2)
    model2.load_state_dict(loaded['model'])
    opt2.load_state_dict(loaded['opt'])
    ema2.load_state_dict(loaded['ema'])
    train(model2, opt2, m, ema2, first_step=n + 1)

    want = ema.module.state_dict()
    got = ema2.module.state_dict()
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_load_state_dict_keeps_the_current_settings():
    ema = ModelEMA(toy_model(), 0.5, every=2)
    ema.load_state_dict(ModelEMA(toy_model(seed=9), 0.9, every=1).state_dict())
    assert (ema.decay, ema.every) == (0.5, 2)
    assert torch.equal(ema.module[0].weight, toy_model(seed=9)[0].weight)


def test_mismatched_model_raises_naming_the_parameter():
    ema = ModelEMA(toy_model(), 0.9)
    wider = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5))
    with pytest.raises(ValueError, match=r"'0\.weight'"):
        ema.update(wider, 1)
    renamed = nn.Sequential(nn.Identity(), nn.Linear(4, 3), nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match=r"'0\.weight'"):
        ema.update(renamed, 1)
    longer = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"'2\.weight'"):
        ema.update(longer, 1)


@pytest.mark.parametrize('kwargs, name', [
    ({'decay': 1.0}, 'decay'), ({'decay': -0.1}, 'decay'), ({'decay': float('nan')}, 'decay'),
    ({'decay': 0.9, 'every': 0}, 'every'), ({'decay': 0.9, 'every': 1.5}, 'every'),
    ({'decay': 0.9, 'warmup_steps': -1}, 'warmup_steps'),
])
def test_bad_arguments_raise_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ModelEMA(toy_model(), **kwargs)


def test_channels_last_conv_model_with_zero_decay_equals_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = ModelEMA(model, 0.0)
    assert ema.module[0].weight.is_contiguous(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(2)
    for step in range(1, 4):
        x = torch.randn(2, 3, 6, 6, generator=gen).to(memory_format=torch.channels_last)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert ema.update(model, step)
    assert ema.module[0].weight.is_contiguous(memory_format=torch.channels_last)
    model.eval()
    x = torch.randn(2, 3, 6, 6, generator=gen).to(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(ema.module(x), model(x))


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
