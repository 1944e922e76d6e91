"""ResNet-18/50 for ImageNet training, with the ffcv recipe's optional tweaks.

Provides ``build_model`` (torchvision ResNets plus BlurPool (:mod:`.blurpool`), zero-init residuals,
channels-last and stochastic depth), ``drop_path_rates`` to inspect per-block
drop rates, and plain-torchvision weight exchange: ``to_torchvision_state_dict``,
``load_torchvision_state_dict`` and ``unwrap`` (removes DDP / torch.compile wrappers).

Every option but ``head='conv1x1'`` (``head.*`` keys) keeps ``state_dict()`` keys and
shapes identical to ``torchvision.models.resnet18/resnet50(num_classes=...)``: the
tweaks add no parameters or persistent buffers. In eval mode the same weights compute
the same function in stock torchvision, except with BlurPool, whose filter torchvision
lacks: ``to_torchvision_state_dict`` refuses such a model.
Models take (B, 3, H, W) float images and return (B, num_classes) logits.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from .blurpool import BLUR_FORMS, BlurConv2d, set_blur_form  # noqa: F401 (re-exported)

ARCHS = ('resnet18', 'resnet50')
_WRAPPER_PREFIXES = ('module.', '_orig_mod.')


class DropPath(nn.Module):
    """Stochastic depth: zero whole samples with probability ``p`` in training.

    Survivors are scaled by 1 / (1 - p) so the expected output is unchanged;
    identity in eval mode or when ``p == 0``. Input (B, ...) -> same shape.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        # scaling the (B, 1, ...) mask, not x, keeps it one pass over the activations
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f'p={self.p:.4g}'


class _DropPathBlock:
    """Residual forward shared by both block types: relu(drop_path(branch) + shortcut)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)  # torchvision's block, next in the MRO
        self.drop_path = DropPath(0.0)  # rate set by build_model once blocks are counted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.drop_path(self.branch(x)) + shortcut)


class _BasicBlock(_DropPathBlock, BasicBlock):
    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class _Bottleneck(_DropPathBlock, Bottleneck):
    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


_LAYOUTS = {'resnet18': (_BasicBlock, [2, 2, 2, 2]), 'resnet50': (_Bottleneck, [3, 4, 6, 3])}
HEADS = ('fc', 'conv1x1')


class ConvHeadResNet(ResNet):
    """A ResNet whose classifier is a 1x1 convolution over the last feature map,
    averaged over positions afterwards: ``head`` (num_classes, C, 1, 1) replaces
    ``fc``. Averaging and a linear map commute, so it computes the same function
    class as the FC head; what it adds is a per-position class map (``features``
    -> ``head``) for localisation, at H x W times the head's multiply-adds."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.head = nn.Conv2d(self.fc.in_features, self.fc.out_features, 1)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)
        del self.fc

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.head(x).mean(dim=(2, 3))


def _apply_blurpool(module: nn.Module) -> None:
    # Zhang 2019 / ffcv rule: blur before every strided conv that sees >= 16 channels,
    # which excludes the RGB stem (blurring raw pixels only costs detail).
    for name, child in module.named_children():
        if (type(child) is nn.Conv2d and max(child.stride) > 1
                and child.in_channels >= 16):
            setattr(module, name, BlurConv2d.from_conv(child))
        else:
            _apply_blurpool(child)


def build_model(arch: str, num_classes: int = 1000, *, blurpool: bool = False,
                zero_init_residual: bool = False, channels_last: bool = False,
                drop_path_rate: float = 0.0, head: str = 'fc') -> nn.Module:
    """A torchvision-compatible ResNet: (B, 3, H, W) float -> (B, num_classes) logits.

    blurpool: replace every Conv2d with stride > 1 and in_channels >= 16 (the strided
        block convs and 1x1 downsample convs, not the 3-channel stem) by a BlurConv2d.
    zero_init_residual: the last BN gamma of each block (bn2 / bn3) starts at 0, so
        every block starts as an identity on its shortcut.
    channels_last: convert parameters to ``torch.channels_last``.
    drop_path_rate: stochastic depth in [0, 1); block i of n drops its residual
        branch with probability ``drop_path_rate * i / (n - 1)``.
    head: 'fc' (torchvision's keys) or 'conv1x1' (:class:`ConvHeadResNet`: ``head.*``
        keys instead of ``fc.*``).
    Initialisation otherwise as torchvision (kaiming fan_out convs, BN 1 / 0).
    """
    if arch not in _LAYOUTS:
        raise ValueError(f'unknown arch {arch!r}; choose one of {", ".join(ARCHS)}')
    if not 0.0 <= drop_path_rate < 1.0:  # also rejects NaN
        raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate}')
    if head not in HEADS:
        raise ValueError(f'unknown head {head!r}; choose one of {", ".join(HEADS)}')
    block, layers = _LAYOUTS[arch]
    network = ConvHeadResNet if head == 'conv1x1' else ResNet
    model = network(block, layers, num_classes=num_classes,
                    zero_init_residual=zero_init_residual)
    blocks = [m for m in model.modules() if isinstance(m, _DropPathBlock)]
    for i, blk in enumerate(blocks):
        blk.drop_path.p = drop_path_rate * i / max(len(blocks) - 1, 1)
    if blurpool:
        _apply_blurpool(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def drop_path_rates(model: nn.Module) -> list[float]:
    """Per-residual-block drop probabilities, in forward order (layer1.0 first)."""
    return [m.drop_path.p for m in unwrap(model).modules() if isinstance(m, _DropPathBlock)]


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside (possibly nested) DDP / DataParallel / torch.compile wrappers."""
    parallel = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while True:
        if isinstance(model, parallel):
            model = model.module
        elif isinstance(getattr(model, '_orig_mod', None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


class NotTorchvisionError(ValueError):
    """The model computes a function that torchvision's ResNet cannot, whatever its weights."""


def to_torchvision_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights as a plain torchvision ResNet state_dict: unprefixed keys, contiguous CPU
    tensors. A 1x1-conv head (``head.*``) becomes ``fc.*``: averaging and a linear map
    commute, so torchvision's FC head computes the same logits up to float rounding.

    Raises:
        NotTorchvisionError: the model blurs before its strided convolutions (BlurPool).
            Its state_dict would load into ``torchvision.models.resnet18/50`` with
            ``strict=True`` (the blur filter is no parameter), yet compute another
            function there, with nothing to say so.
    """
    model = unwrap(model)
    blurred = [name for name, m in model.named_modules() if isinstance(m, BlurConv2d)]
    if blurred:
        raise NotTorchvisionError(
            f"this model uses BlurPool ({len(blurred)} convolutions, e.g. {blurred[0]}), "
            "which torchvision's ResNet lacks: its weights would compute another function "
            "there; export it as pt2 or onnx (python -m ffcv_imagenet export ... --format "
            "pt2), or load the weights into ffcv_imagenet.build_model(arch, blurpool=True)")
    weights = {_strip_prefixes(k): v.detach().cpu().contiguous()
               for k, v in model.state_dict().items()}
    if 'head.weight' in weights:  # the 1x1-conv head is torchvision's fc, reshaped
        weights['fc.weight'] = weights.pop('head.weight')[:, :, 0, 0].contiguous()
        weights['fc.bias'] = weights.pop('head.bias')
    return weights


def _mismatch(expected: dict, given: dict) -> str | None:
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f'{k!r}: checkpoint {tuple(given[k].shape)} vs model {tuple(v.shape)}'
              for k, v in expected.items() if k in given and given[k].shape != v.shape]
    parts = []
    for label, items in (('missing keys', missing), ('unexpected keys', unexpected),
                         ('shape mismatch', shapes)):
        if items:
            more = f' (+{len(items) - 3} more)' if len(items) > 3 else ''
            parts.append(f'{label} {", ".join(map(str, items[:3]))}{more}')
    return '; '.join(parts) or None


def load_torchvision_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Strictly load a torchvision ResNet state_dict (``module.`` / ``_orig_mod.`` prefixes ok).

    Raises ValueError naming the first offending keys and shapes on any mismatch.
    """
    target = unwrap(model)
    given = {_strip_prefixes(k): v for k, v in state_dict.items()}
    problem = _mismatch(target.state_dict(), given)
    if problem:
        raise ValueError(f'state_dict does not fit {type(target).__name__}: {problem}')
    target.load_state_dict(given, strict=True)


def describe_model(model: nn.Module, resolution: int,
                   bytes_per_value: int = 4) -> dict[str, float]:
    """What training ``model`` costs per image at ``resolution`` pixels (square), from
    one forward pass of a CPU copy in eval mode (the model itself is untouched):
    ``params`` (count), ``gmacs`` (multiply-adds, 1e9; FLOPs are twice that), and
    ``activation_mib`` (MiB per image: the outputs of every leaf module, which
    backward keeps, at ``bytes_per_value`` bytes each; an estimate, as autograd keeps
    some inputs instead and frees some outputs).
    """
    from torch.utils.flop_counter import FlopCounterMode
    import copy
    plain = copy.deepcopy(unwrap(model)).cpu().float().eval()
    values = [0]

    def count(module, inputs, output):
        if isinstance(output, torch.Tensor) and not list(module.children()):
            values[0] += output.numel()
    hooks = [m.register_forward_hook(count) for m in plain.modules()]
    try:
        with FlopCounterMode(display=False) as flops, torch.no_grad():
            plain(torch.zeros(1, 3, resolution, resolution))
    finally:
        for hook in hooks:
            hook.remove()
    return {'params': float(sum(p.numel() for p in plain.parameters())),
            'gmacs': flops.get_total_flops() / 2e9,
            'activation_mib': values[0] * bytes_per_value / 2 ** 20}
