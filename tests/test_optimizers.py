"""AdamW and LARS against a hand computation on a toy model, their exemptions for
norm parameters and biases, exact continuation from a saved state, and the config."""
import copy
import math

import pytest
import torch
from torch import nn

from ffcv_imagenet.training.optim import LARS, build_optimizer
from train_args import tiny_args


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


@pytest.mark.parametrize('name', ['adamw', 'lars'])
def test_training_with_each_optimizer_and_refusing_to_switch_on_resume(betons, tmp_path,
                                                                       name):
    import train_imagenet
    from ffcv_imagenet.cli.config import ConfigError
    from ffcv_imagenet.training.checkpoint import checkpoint_dir, load_checkpoint
    folder = tmp_path / name
    lr = '--lr.lr=0.003' if name == 'adamw' else '--lr.lr=2.0'
    assert train_imagenet.main(tiny_args(betons, folder, f'--optimizer.name={name}', lr,
                                         '--training.stop_after=1')) == 0
    saved = load_checkpoint(checkpoint_dir(folder) / 'last.pt')
    assert saved['config']['optimizer.name'] == name
    assert math.isfinite(saved['metrics']['train_loss'])
    with pytest.raises(ConfigError, match=f'optimizer.name: .*trained with {name}'):
        train_imagenet.main(tiny_args(betons, folder, '--checkpoint.resume=auto'))
    assert train_imagenet.main(tiny_args(betons, folder, f'--optimizer.name={name}', lr,
                                         '--checkpoint.resume=auto')) == 0
    assert load_checkpoint(checkpoint_dir(folder) / 'final.pt')['epoch'] == 2
