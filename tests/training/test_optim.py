"""Optimizers and precision (training/optim.py): no weight decay on norm parameters
and biases (or, by ffcv-imagenet's rule, on names with 'bn'), SGD's options and its
fused form, AdamW and LARS against a hand computation, exact continuation from a saved
state, the precision choices."""
import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

from ffcv_imagenet.training.models import build_model
from ffcv_imagenet.training.optim import (LARS, build_optimizer, build_sgd, param_groups,
                                          resolve_precision)
from tests.support import random_batches


@pytest.mark.parametrize('arch', ['resnet18', 'resnet50'])
def test_no_weight_decay_on_any_norm_parameter_or_bias(arch):
    model = build_model(arch, 10, blurpool=True)
    decay, no_decay = param_groups(model, 1e-4)
    assert decay['weight_decay'] == 1e-4 and no_decay['weight_decay'] == 0.0
    decayed = {id(p) for p in decay['params']}
    names = {id(p): name for name, p in model.named_parameters()}
    norm_or_bias = {name for name, p in model.named_parameters()
                    if name.endswith('bias') or p.ndim == 1}
    # downsample BatchNorms ('layerN.0.downsample.1') have no 'bn' in their names
    assert any('downsample.1' in name for name in norm_or_bias)
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, nn.BatchNorm2d) or name == 'bias':
                assert id(param) not in decayed, f"{module_name}.{name}"
            else:
                assert isinstance(module, (nn.Conv2d, nn.Linear))
                assert id(param) in decayed, f"{module_name}.{name}"
    every = [names[id(p)] for p in decay['params'] + no_decay['params']]
    assert sorted(every) == sorted(names.values())  # each parameter exactly once


def test_the_names_rule_decays_every_parameter_whose_name_lacks_bn():
    model = build_model('resnet50', blurpool=True)
    names = {id(p): name for name, p in model.named_parameters()}
    by_types, _ = param_groups(model, 1e-4)
    by_names, exempt = param_groups(model, 1e-4, 'names')
    decayed = {names[id(p)] for p in by_names['params']}
    assert decayed == {name for name in names.values() if 'bn' not in name}
    assert {names[id(p)] for p in exempt['params']} == {n for n in names.values() if 'bn' in n}
    assert by_names['weight_decay'] == 1e-4 and exempt['weight_decay'] == 0.0
    # beyond the default rule: the four downsample BatchNorms and fc.bias
    extra = [p for p in by_names['params'] if id(p) not in {id(q) for q in by_types['params']}]
    assert sorted(names[id(p)] for p in extra) == sorted(
        ['fc.bias'] + [f'layer{i}.0.downsample.1.{w}' for i in (1, 2, 3, 4)
                       for w in ('weight', 'bias')])
    widths = [256, 512, 1024, 2048]  # the output channels of layers 1-4
    assert sum(p.numel() for p in extra) == 1000 + 2 * sum(widths) == 8680


@pytest.mark.parametrize('name', ['sgd', 'adamw', 'lars'])
def test_every_optimizer_takes_the_decay_rule(name):
    model = nn.Sequential(OrderedDict(fc=nn.Linear(3, 2), bn=nn.BatchNorm1d(2)))
    optimizer = build_optimizer(name, model, lr=0.1, weight_decay=1e-3, decay_rule='names')
    decay, exempt = optimizer.param_groups
    ids = lambda params: [id(p) for p in params]  # noqa: E731
    assert ids(decay['params']) == ids([model.fc.weight, model.fc.bias])  # the bias too
    assert ids(exempt['params']) == ids([model.bn.weight, model.bn.bias])
    assert decay['weight_decay'] == 1e-3
    if name == 'lars':  # the trust ratio follows the decay
        assert decay['lars'] and not exempt['lars']


def test_an_unknown_decay_rule_is_refused():
    with pytest.raises(ValueError, match="unknown weight-decay rule 'bn'"):
        param_groups(_toy(), 1e-4, 'bn')
    with pytest.raises(ValueError, match="unknown weight-decay rule 'name'"):
        build_optimizer('sgd', _toy(), lr=0.1, weight_decay=1e-4, decay_rule='name')


def test_sgd_options():
    model = build_model('resnet18', 10)
    optimizer = build_sgd(model, lr=0.1, momentum=0.9, weight_decay=5e-5, nesterov=True)
    assert [g['weight_decay'] for g in optimizer.param_groups] == [5e-5, 0.0]
    assert all(g['nesterov'] and g['momentum'] == 0.9 for g in optimizer.param_groups)
    with pytest.raises(ValueError, match='nesterov'):
        build_sgd(model, lr=0.1, momentum=0.0, weight_decay=0.0, nesterov=True)


def test_fused_sgd_steps_like_the_plain_one():
    torch.manual_seed(0)
    plain_model = build_model('resnet18', 10)
    fused_model = build_model('resnet18', 10)
    fused_model.load_state_dict(plain_model.state_dict())
    plain = build_sgd(plain_model, lr=0.1, momentum=0.9, weight_decay=1e-4)
    fused = build_sgd(fused_model, lr=0.1, momentum=0.9, weight_decay=1e-4, fused=True)
    assert all(group['fused'] for group in fused.param_groups)
    assert not any(group['fused'] for group in plain.param_groups)
    images, labels = random_batches(1, size=4)[0]
    for model, optimizer in ((plain_model, plain), (fused_model, fused)):
        for _ in range(2):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
    for a, b in zip(plain_model.parameters(), fused_model.parameters()):
        assert torch.allclose(a, b, atol=1e-5)


def _toy():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def _grads(model, seed):
    """Sets a known gradient on every parameter and returns them by name."""
    generator = torch.Generator().manual_seed(seed)
    grads = {}
    for name, param in model.named_parameters():
        param.grad = torch.randn(param.shape, generator=generator)
        grads[name] = param.grad.clone()
    return grads


def test_lars_matches_the_formula_and_skips_norms_and_biases():
    model = _toy()
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    lr, momentum, decay, eta = 0.5, 0.9, 1e-2, 0.001
    optimizer = build_optimizer('lars', model, lr=lr, momentum=momentum, weight_decay=decay,
                                trust_coefficient=eta)
    assert isinstance(optimizer, LARS)
    buffers = {k: torch.zeros_like(v) for k, v in start.items()}
    weights = copy.deepcopy(start)
    for seed in (1, 2):
        grads = _grads(model, seed)
        optimizer.step()
        for name, w in weights.items():
            g = grads[name]
            if name == '0.weight':  # the only decayed, trust-ratio parameter
                ratio = eta * w.norm() / (g.norm() + decay * w.norm())
                update = ratio * (g + decay * w)
            else:  # the linear bias and both BatchNorm parameters: plain momentum SGD
                update = g
            buffers[name] = momentum * buffers[name] + lr * update
            weights[name] = w - buffers[name]
        for name, param in model.named_parameters():
            torch.testing.assert_close(param.detach(), weights[name], rtol=1e-6, atol=1e-7)


def test_lars_takes_a_plain_step_where_a_norm_is_zero():
    weight = nn.Parameter(torch.zeros(4))
    optimizer = LARS([{'params': [weight]}], lr=0.1, momentum=0.0)
    weight.grad = torch.ones(4)
    optimizer.step()
    torch.testing.assert_close(weight.detach(), torch.full((4,), -0.1))


def test_adamw_matches_the_formula_with_decoupled_decay_on_weights_only():
    model = _toy()
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    lr, decay, (b1, b2), eps = 0.01, 0.1, (0.8, 0.99), 1e-8
    optimizer = build_optimizer('adamw', model, lr=lr, weight_decay=decay, betas=(b1, b2),
                                eps=eps)
    weights, first, second = copy.deepcopy(start), {}, {}
    for step, seed in enumerate((1, 2), start=1):
        grads = _grads(model, seed)
        optimizer.step()
        for name, w in weights.items():
            g = grads[name]
            first[name] = b1 * first.get(name, 0) + (1 - b1) * g
            second[name] = b2 * second.get(name, 0) + (1 - b2) * g * g
            m_hat = first[name] / (1 - b1 ** step)
            v_hat = second[name] / (1 - b2 ** step)
            wd = decay if name == '0.weight' else 0.0
            weights[name] = w * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps)
        for name, param in model.named_parameters():
            torch.testing.assert_close(param.detach(), weights[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('name', ['sgd', 'adamw', 'lars'])
def test_a_restored_optimizer_continues_exactly(name):
    """Three steps in one go equal one step, a state_dict round trip into a fresh
    optimizer, and two more steps."""
    def steps(model, optimizer, seeds):
        for seed in seeds:
            _grads(model, seed)
            optimizer.step()

    build = lambda model: build_optimizer(name, model, lr=0.05, weight_decay=1e-3)  # noqa: E731
    straight = _toy()
    steps(straight, build(straight), (1, 2, 3))
    first = _toy()
    optimizer = build(first)
    steps(first, optimizer, (1,))
    saved = copy.deepcopy(optimizer.state_dict())
    second = copy.deepcopy(first)
    resumed = build(second)
    resumed.load_state_dict(saved)
    steps(second, resumed, (2, 3))
    for (key, a), b in zip(straight.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), key


def test_an_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="unknown optimizer 'adam'"):
        build_optimizer('adam', _toy(), lr=0.1, weight_decay=0.0)


def test_precision_choices_on_the_cpu():
    cpu = torch.device('cpu')
    assert resolve_precision('auto', cpu).dtype is None
    bf16 = resolve_precision('bf16', cpu)
    assert bf16.dtype == torch.bfloat16 and not bf16.needs_scaler
    assert not bf16.scaler().is_enabled()
    with bf16.autocast():
        assert nn.Linear(4, 4)(torch.ones(2, 4)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match='fp16 needs a CUDA device'):
        resolve_precision('fp16', cpu)
    with pytest.raises(ValueError, match='unknown precision'):
        resolve_precision('fp8', cpu)
