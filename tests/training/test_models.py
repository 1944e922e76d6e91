"""ffcv_imagenet.training.models: torchvision compatibility, BlurPool, zero-init,
channels-last, drop path."""
import pytest
import torch
import torchvision
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ffcv_imagenet.training.models import (ARCHS, BlurConv2d, DropPath, NotTorchvisionError,
                                           build_model, drop_path_rates,
                                           load_torchvision_state_dict,
                                           to_torchvision_state_dict, unwrap)

BLOCKS = {'resnet18': 8, 'resnet50': 16}
# Strided convs seeing >= 16 channels: the first block of layers 2-4 has one strided
# 3x3 conv (conv1 in BasicBlock, conv2 in torchvision's v1.5 Bottleneck) and one
# strided 1x1 downsample conv, so 6 in both archs; the 7x7 stem conv sees RGB.
BLURRED = {
    'resnet18': {f'layer{i}.0.{c}' for i in (2, 3, 4) for c in ('conv1', 'downsample.0')},
    'resnet50': {f'layer{i}.0.{c}' for i in (2, 3, 4) for c in ('conv2', 'downsample.0')},
}


def torchvision_model(arch, num_classes=1000, seed=0):
    torch.manual_seed(seed)
    return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes).eval()


def images(seed=1, batch=2, size=64):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope='module', params=ARCHS)
def reference(request):
    """(arch, seeded torchvision model in eval mode, its logits on ``images()``)."""
    tv = torchvision_model(request.param)
    with torch.no_grad():
        return request.param, tv, tv(images())


def test_archs_listed():
    assert ARCHS == ('resnet18', 'resnet50')


@pytest.mark.parametrize('options', [{}, {'blurpool': True}, {'drop_path_rate': 0.2},
                                     {'blurpool': True, 'drop_path_rate': 0.2,
                                      'zero_init_residual': True, 'channels_last': True}])
def test_state_dict_matches_torchvision(reference, options):
    arch, tv, _ = reference
    ours = build_model(arch, **options)
    assert list(ours.state_dict()) == list(tv.state_dict())
    assert shapes(ours) == shapes(tv)


def test_torchvision_weights_give_torchvision_outputs(reference):
    arch, tv, expected = reference
    ours = build_model(arch).eval()
    load_torchvision_state_dict(ours, tv.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(ours(images()), expected)


def test_exported_weights_give_same_outputs_in_torchvision(reference):
    arch, _, _ = reference
    torch.manual_seed(5)
    ours = build_model(arch, num_classes=7).eval()
    tv = getattr(torchvision.models, arch)(weights=None, num_classes=7).eval()
    tv.load_state_dict(to_torchvision_state_dict(ours), strict=True)
    with torch.no_grad():
        assert ours(images()).shape == (2, 7)
        torch.testing.assert_close(tv(images()), ours(images()))


def test_a_blurpool_model_is_refused_by_the_torchvision_export():
    torch.manual_seed(0)
    blurred = build_model('resnet18', num_classes=10, blurpool=True).eval()
    # why: its weights load into torchvision strictly, yet compute another function
    tv = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    tv.load_state_dict(blurred.state_dict(), strict=True)
    with torch.no_grad():
        assert (tv(images()) - blurred(images())).abs().max() > 1e-2
    with pytest.raises(NotTorchvisionError, match=r'BlurPool \(6 convolutions, e\.g\. '
                       r'layer2\.0\.conv1\).*blurpool=True') as err:
        to_torchvision_state_dict(torch.compile(blurred))
    assert '\n' not in str(err.value) and isinstance(err.value, ValueError)


def test_export_strips_wrappers_and_returns_cpu_tensors():
    model = build_model('resnet18', num_classes=3, channels_last=True)
    compiled = torch.compile(model)
    wrapped = nn.DataParallel(compiled)
    assert unwrap(wrapped) is model and unwrap(compiled) is model and unwrap(model) is model
    assert list(wrapped.state_dict())[0].startswith('module.')
    state = to_torchvision_state_dict(wrapped)
    assert list(state) == list(model.state_dict())
    assert all(t.device.type == 'cpu' and t.is_contiguous() for t in state.values())


@pytest.mark.parametrize('prefix', ['module.', '_orig_mod.', 'module._orig_mod.'])
def test_load_accepts_wrapper_prefixes(prefix):
    source = torchvision_model('resnet18', num_classes=3)
    ours = build_model('resnet18', num_classes=3).eval()
    load_torchvision_state_dict(ours, {prefix + k: v for k, v in source.state_dict().items()})
    with torch.no_grad():
        torch.testing.assert_close(ours(images()), source(images()))


def test_load_into_wrapped_model():
    source = torchvision_model('resnet18', num_classes=3)
    ours = build_model('resnet18', num_classes=3).eval()
    load_torchvision_state_dict(nn.DataParallel(ours), source.state_dict())
    torch.testing.assert_close(ours.fc.weight, source.fc.weight)


def test_load_rejects_other_arch():
    with pytest.raises(ValueError, match=r"missing keys .*layer\d\.\d\.\w+") as err:
        load_torchvision_state_dict(build_model('resnet50'), torchvision_model('resnet18').state_dict())
    assert '\n' not in str(err.value)


def test_load_rejects_other_num_classes():
    model = build_model('resnet18')
    before = model.fc.weight.clone()
    with pytest.raises(ValueError, match=r"'fc\.weight': checkpoint \(10, 512\) vs model \(1000, 512\)"):
        load_torchvision_state_dict(model, torchvision_model('resnet18', num_classes=10).state_dict())
    assert torch.equal(model.fc.weight, before)  # nothing half-loaded


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"'vgg16'.*resnet18, resnet50"):
        build_model('vgg16')
    for rate in (-0.1, 1.0, 1.5, float('nan')):
        with pytest.raises(ValueError, match='drop_path_rate'):
            build_model('resnet18', drop_path_rate=rate)


@pytest.mark.parametrize('arch', ARCHS)
def test_blurpool_placement(arch):
    model = build_model(arch, blurpool=True)
    blurred = {n for n, m in model.named_modules() if isinstance(m, BlurConv2d)}
    assert blurred == BLURRED[arch]
    assert type(model.conv1) is nn.Conv2d and model.conv1.stride == (2, 2)
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and name not in blurred:
            assert m.stride == (1, 1) or m.in_channels < 16, name
    assert not any(isinstance(m, BlurConv2d) for m in build_model(arch).modules())


@pytest.mark.parametrize('arch', ARCHS)
def test_blurpool_keeps_stage_shapes_and_changes_outputs(arch):
    plain, blur = build_model(arch).eval(), build_model(arch, blurpool=True).eval()
    blur.load_state_dict(plain.state_dict())  # cross-loadable: same keys
    seen = {}
    for tag, model in (('plain', plain), ('blur', blur)):
        for stage in ('layer1', 'layer2', 'layer3', 'layer4', 'fc'):
            getattr(model, stage).register_forward_hook(
                lambda _m, _i, out, key=(tag, stage): seen.__setitem__(key, out.shape))
        with torch.no_grad():
            seen[tag] = model(images())
    for stage in ('layer1', 'layer2', 'layer3', 'layer4', 'fc'):
        assert seen['plain', stage] == seen['blur', stage]
    assert seen['plain', 'layer4'][-2:] == (2, 2)
    assert not torch.allclose(seen['plain'], seen['blur'])


def test_blur_filter_is_a_normalised_binomial_blur():
    conv = BlurConv2d(16, 8, 3, stride=2, padding=1, bias=False)
    assert conv.blur_filter.shape == (16, 1, 3, 3)
    torch.testing.assert_close(conv.blur_filter.sum(dim=(1, 2, 3)), torch.ones(16))
    assert 'blur_filter' not in conv.state_dict()

    constant = torch.full((1, 16, 8, 8), 3.0)
    torch.testing.assert_close(conv.blur(constant)[..., 1:-1, 1:-1], constant[..., 1:-1, 1:-1])

    impulse = torch.zeros(1, 16, 7, 7)
    impulse[..., 3, 3] = 1.0
    expected = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    out = conv.blur(impulse)
    torch.testing.assert_close(out[..., 2:5, 2:5], expected.expand(1, 16, 3, 3))
    assert out.sum() == pytest.approx(16.0)

    x = torch.randn(2, 16, 9, 9)
    plain = nn.Conv2d(16, 8, 3, stride=2, padding=1, bias=False)
    plain.weight = conv.weight
    torch.testing.assert_close(conv(x), plain(conv.blur(x)))
    assert conv(x).shape == plain(x).shape == (2, 8, 5, 5)


@pytest.mark.parametrize('arch', ARCHS)
def test_zero_init_residual(arch):
    model = build_model(arch, zero_init_residual=True).eval()
    last = 'bn3' if arch == 'resnet50' else 'bn2'
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    zeroed = {n for n in bns if n.endswith(last)}
    assert len(zeroed) == BLOCKS[arch]
    for name, bn in bns.items():
        assert torch.all(bn.weight == (0.0 if name in zeroed else 1.0)), name
        assert torch.all(bn.bias == 0.0), name
    default = build_model(arch)
    assert all(torch.all(m.weight == 1.0) for m in default.modules() if isinstance(m, nn.BatchNorm2d))

    block = model.layer2[1]  # no downsample: with a zero branch the block is relu(x)
    x = torch.randn(2, block.conv1.in_channels, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(x))


def test_channels_last():
    model = build_model('resnet50', channels_last=True, blurpool=True)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not build_model('resnet50').conv1.weight.is_contiguous(memory_format=torch.channels_last)
    out = model.eval()(images().to(memory_format=torch.channels_last))
    assert out.shape == (2, 1000)


@pytest.mark.parametrize('arch', ARCHS)
def test_drop_path_rates_rise_linearly(arch):
    rates = drop_path_rates(build_model(arch, drop_path_rate=0.3))
    n = BLOCKS[arch]
    assert len(rates) == n
    assert rates == pytest.approx([0.3 * i / (n - 1) for i in range(n)])
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    assert drop_path_rates(build_model(arch)) == [0.0] * n


@pytest.mark.parametrize('arch', ARCHS)
def test_drop_path_is_identity_in_eval(arch):
    plain = build_model(arch).eval()
    dropping = build_model(arch, drop_path_rate=0.5).eval()
    dropping.load_state_dict(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(dropping(images()), plain(images()))


def test_drop_path_is_random_in_training():
    model = build_model('resnet18', num_classes=10, drop_path_rate=0.9).train()
    x = images(batch=4)

    def run(seed):
        torch.manual_seed(seed)
        with torch.no_grad():
            return model(x)

    torch.testing.assert_close(run(0), run(0))
    assert not torch.allclose(run(0), run(1))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_drop_path_acts_per_sample_on_the_residual_branch():
    block = build_model('resnet18', drop_path_rate=0.5).layer1[1].eval()
    block.drop_path.p = 0.5
    block.drop_path.train()
    x = torch.randn(64, 64, 4, 4)
    torch.manual_seed(0)
    with torch.no_grad():
        branch = block.branch(x)
        out = block(x)
    kept = torch.relu(x + 2 * branch)  # survivors scaled by 1 / (1 - 0.5)
    dropped = torch.relu(x)
    is_kept = [torch.allclose(o, k) for o, k in zip(out, kept)]
    is_dropped = [torch.allclose(o, d) for o, d in zip(out, dropped)]
    assert all(a != b for a, b in zip(is_kept, is_dropped))  # each sample is exactly one
    assert 16 < sum(is_kept) < 48


def test_drop_path_preserves_expectation():
    drop = DropPath(0.3).train()
    torch.manual_seed(0)
    out = drop(torch.ones(20000, 2, 3))
    values = out.unique()
    torch.testing.assert_close(values, torch.tensor([0.0, 1 / 0.7]))
    assert out.mean().item() == pytest.approx(1.0, abs=0.03)
    assert (out[:, 0, 0][:, None, None] == out).all()  # whole samples, not elements


def test_describe_model_counts_what_a_step_costs_and_leaves_the_model_alone():
    import torchvision
    from ffcv_imagenet.training.models import describe_model
    model = build_model('resnet18', 10)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    full, half = describe_model(model, 256), describe_model(model, 128)
    assert full['params'] == sum(p.numel() for p in
                                 torchvision.models.resnet18(num_classes=10).parameters())
    assert 1.7 < describe_model(model, 224)['gmacs'] < 1.9  # ResNet-18's published 1.8 G
    # convolutions and activations grow with the pixel count (the head does not)
    assert full['gmacs'] / half['gmacs'] == pytest.approx(4, rel=0.01)
    assert full['activation_mib'] / half['activation_mib'] == pytest.approx(4, rel=0.01)
    assert describe_model(model, 256, bytes_per_value=2)['activation_mib'] == \
        pytest.approx(full['activation_mib'] / 2)
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_the_1x1_conv_head_classifies_every_position_and_is_off_by_default():
    from ffcv_imagenet.training.models import ConvHeadResNet
    plain = build_model('resnet18', 7)
    assert 'fc.weight' in plain.state_dict() and not any(
        k.startswith('head.') for k in plain.state_dict())
    model = build_model('resnet18', 7, head='conv1x1', blurpool=True, channels_last=True)
    assert isinstance(model, ConvHeadResNet)
    keys = model.state_dict()
    assert keys['head.weight'].shape == (7, 512, 1, 1) and keys['head.bias'].shape == (7,)
    assert not any(k.startswith('fc.') for k in keys)
    assert [k for k in keys if not k.startswith('head.')] == \
        [k for k in plain.state_dict() if not k.startswith('fc.')]
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    logits = model(x)
    assert logits.shape == (2, 7)
    # the same function as pooling first and applying the head as a linear layer
    features = model.layer4(model.layer3(model.layer2(model.layer1(
        model.maxpool(model.relu(model.bn1(model.conv1(x))))))))
    pooled = features.mean(dim=(2, 3))
    expected = pooled @ model.head.weight.flatten(1).T + model.head.bias
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="unknown head 'mlp'"):
        build_model('resnet18', 7, head='mlp')


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


def test_a_1x1_conv_head_exports_to_torchvisions_fc_with_the_same_logits():
    import torchvision
    torch.manual_seed(0)
    model = build_model('resnet18', 5, head='conv1x1').eval()
    plain = torchvision.models.resnet18(num_classes=5).eval()
    plain.load_state_dict(to_torchvision_state_dict(model), strict=True)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(plain(images), model(images), atol=1e-5, rtol=1e-5)
