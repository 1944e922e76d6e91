"""ffcv_imagenet.training.blurpool: every form of the blur computes the function of the
reference form (blur at every position, then the strided conv), in outputs and in
gradients; the 1x1 path blurs only where its conv reads; checkpoints are unaffected."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ffcv_imagenet.training.blurpool import (BLUR_FORMS, BlurConv2d, blur_shifted,
                                             set_blur_form)
from ffcv_imagenet.training.models import build_model

FAST_FORMS = [form for form in BLUR_FORMS if form != 'reference']
SIZES = [(64, 64), (57, 71)]  # even, and odd by even


def _explicit_blur(x):
    """The blur written out: zero-pad 1, then [1,2,1] x [1,2,1] / 16 at every position."""
    padded = F.pad(x, (1, 1, 1, 1))
    taps = (1.0, 2.0, 1.0)
    height, width = x.shape[-2:]
    return sum(taps[i] * taps[j] / 16 * padded[..., i:i + height, j:j + width]
               for i in range(3) for j in range(3))


def _run(model, x, form):
    """Logits and the gradients of a fixed weighting of them: input's and every parameter's."""
    set_blur_form(model, form)
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    logits = model(x)
    weights = torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype).view_as(logits)
    (logits * weights).sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    return logits.detach(), x.grad, grads


def _assert_close_relative(actual, expected, rtol, what):
    # tolerance relative to the tensor's largest magnitude: elements near zero carry the
    # rounding of their larger neighbours' sums
    scale = expected.abs().max().clamp_min(1e-30)
    error = (actual - expected).abs().max() / scale
    assert error <= rtol, f'{what}: max |difference| / max |reference| = {error:.3g} > {rtol}'


@pytest.mark.parametrize('size', SIZES, ids=lambda s: f'{s[0]}x{s[1]}')
@pytest.mark.parametrize('arch', ['resnet18', 'resnet50'])
def test_every_form_trains_as_the_reference_form_in_float64(arch, size):
    # train mode: BatchNorm normalises by batch statistics of 2 images, which at the last
    # stage amplifies float32 rounding by orders of magnitude; float64 keeps it far below
    # any difference in function (a misplaced tap or position changes values by ~1e-1)
    torch.manual_seed(0)
    model = build_model(arch, 10, blurpool=True).double().train()
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    expected = _run(model, x, 'reference')
    for form in FAST_FORMS:
        logits, x_grad, grads = _run(model, x, form)
        _assert_close_relative(logits, expected[0], 1e-10, f'{form} logits')
        _assert_close_relative(x_grad, expected[1], 1e-10, f'{form} input gradient')
        assert grads.keys() == expected[2].keys()
        for name, grad in grads.items():
            _assert_close_relative(grad, expected[2][name], 1e-10, f'{form} {name} gradient')


@pytest.mark.parametrize('channels_last', [False, True], ids=['contiguous', 'channels_last'])
@pytest.mark.parametrize('arch', ['resnet18', 'resnet50'])
def test_every_form_matches_the_reference_form_in_float32(arch, channels_last):
    # eval mode (running statistics) keeps the network well conditioned: float32 forms
    # differ by their summation order alone, ~1e-6 of each tensor's magnitude
    torch.manual_seed(0)
    model = build_model(arch, 10, blurpool=True, channels_last=channels_last).eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for size in SIZES:
        x = torch.randn(2, 3, *size).to(memory_format=memory_format)
        expected = _run(model, x, 'reference')
        for form in FAST_FORMS:
            logits, x_grad, grads = _run(model, x, form)
            _assert_close_relative(logits, expected[0], 1e-5, f'{form} logits {size}')
            _assert_close_relative(x_grad, expected[1], 1e-5, f'{form} input gradient {size}')
            for name, grad in grads.items():
                _assert_close_relative(grad, expected[2][name], 1e-5, f'{form} {name} {size}')


@pytest.mark.parametrize('size', [(8, 8), (9, 9), (9, 12), (1, 2)], ids=str)
@pytest.mark.parametrize('kernel', [1, 3])
def test_each_form_is_blur_then_conv_written_out(kernel, size):
    conv = BlurConv2d(16, 8, kernel, stride=2, padding=kernel // 2, bias=True)
    plain = nn.Conv2d(16, 8, kernel, stride=2, padding=kernel // 2)
    plain.weight, plain.bias = conv.weight, conv.bias
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    conv, plain = conv.double(), plain.double()
    expected = plain(_explicit_blur(x))
    for form in BLUR_FORMS:
        set_blur_form(conv, form)
        torch.testing.assert_close(conv(x), expected, rtol=1e-12, atol=1e-12, msg=form)


@pytest.mark.parametrize('stride', [(1, 1), (2, 2), (3, 2)], ids=str)
def test_shifted_blur_samples_the_full_blur(stride):
    x = torch.randn(2, 3, 11, 10, dtype=torch.float64)
    expected = _explicit_blur(x)[..., ::stride[0], ::stride[1]]
    torch.testing.assert_close(blur_shifted(x, stride), expected, rtol=1e-12, atol=1e-12)
    half = x.to(torch.bfloat16)
    assert blur_shifted(half, stride).dtype == torch.bfloat16


def _blur_outputs(model, x, monkeypatch):
    """{BlurConv2d name: (its input's shape, elements its depthwise blur computed)}."""
    current, seen = [], {}
    real_conv2d = F.conv2d

    def counting_conv2d(input, weight, *args, **kwargs):
        out = real_conv2d(input, weight, *args, **kwargs)
        if weight.shape[1:] == (1, 3, 3) and kwargs.get('groups') == input.shape[1]:
            seen[current[-1][0]] = (current[-1][1], out.numel())
        return out
    monkeypatch.setattr(F, 'conv2d', counting_conv2d)
    hooks = [m.register_forward_pre_hook(
        lambda _m, args, name=name: current.append((name, tuple(args[0].shape))))
        for name, m in model.named_modules() if isinstance(m, BlurConv2d)]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    monkeypatch.undo()
    return seen


@pytest.mark.parametrize('arch', ['resnet18', 'resnet50'])
def test_the_blur_before_a_1x1_strided_conv_is_computed_only_where_it_is_read(
        arch, monkeypatch):
    model = build_model(arch, 10, blurpool=True).eval()
    x = torch.randn(2, 3, 57, 71)
    set_blur_form(model, 'reference')
    reference = _blur_outputs(model, x, monkeypatch)
    set_blur_form(model, 'conv')
    fast = _blur_outputs(model, x, monkeypatch)
    downsamples = {n for n, m in model.named_modules()
                   if isinstance(m, BlurConv2d) and m.samples_blur}
    assert downsamples == {f'layer{i}.0.downsample.0' for i in (2, 3, 4)}
    assert len(reference) == len(fast) == 6
    for name, ((batch, channels, height, width), elements) in fast.items():
        assert reference[name] == ((batch, channels, height, width),
                                   batch * channels * height * width)
        if name in downsamples:  # rows and columns 0, 2, 4, ...: about a quarter
            elements_read = batch * channels * ((height - 1) // 2 + 1) * ((width - 1) // 2 + 1)
            assert elements == elements_read <= reference[name][1] / 3, name
        else:  # a 3x3 conv reads every position
            assert elements == reference[name][1], name


def test_a_checkpoint_of_the_reference_form_gives_the_same_logits():
    torch.manual_seed(0)
    old = build_model('resnet50', 10, blurpool=True)
    set_blur_form(old, 'reference')
    with torch.no_grad():  # give BatchNorm running statistics that are not the defaults
        old.train()(torch.randn(4, 3, 64, 64))
    checkpoint = {k: v.clone() for k, v in old.state_dict().items()}
    torch.manual_seed(1)
    new = build_model('resnet50', 10, blurpool=True)
    assert list(new.state_dict()) == list(checkpoint)
    assert all(new.state_dict()[k].shape == v.shape for k, v in checkpoint.items())
    new.load_state_dict(checkpoint, strict=True)
    x = torch.randn(2, 3, 57, 71)
    with torch.no_grad():
        torch.testing.assert_close(new.eval()(x), old.eval()(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kernel', [1, 3])
def test_compiled_forms_match_the_reference(kernel):
    conv = BlurConv2d(16, 8, kernel, stride=2, padding=kernel // 2, bias=False)
    x = torch.randn(2, 16, 9, 10)
    expected = conv.reference(x)
    assert BlurConv2d.form == 'conv'  # the default
    for form in FAST_FORMS:
        torch.compiler.reset()
        set_blur_form(conv, form)
        compiled = torch.compile(conv, dynamic=False)
        torch.testing.assert_close(compiled(x), expected, rtol=1e-5, atol=1e-6, msg=form)


def test_unknown_blur_form_is_refused():
    with pytest.raises(ValueError, match="unknown blur form 'fast'.*conv, shifted, reference"):
        set_blur_form(build_model('resnet18', blurpool=True), 'fast')
    assert set_blur_form(build_model('resnet18', blurpool=True), 'shifted') == 6
    assert set_blur_form(build_model('resnet18'), 'shifted') == 0
