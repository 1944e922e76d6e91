"""BlurPool (Zhang 2019): a Conv2d that low-pass filters its input before striding.

``BlurConv2d`` computes ``conv(blur(x))`` with ``blur`` the fixed depthwise
[1,2,1] x [1,2,1] / 16 filter at stride 1 with zero padding 1, whatever its ``form``;
the forms differ only in how much work they do and in what ``torch.compile`` can fuse:

- ``'reference'``: the blur at every input position (a depthwise 3x3 conv), then the
  strided conv. The definition, kept to check the others against.
- ``'conv'`` (the default): as ``'reference'``, except before a 1x1 conv with
  padding 0 and stride s, which reads the blurred map only at rows and columns 0, s,
  2s, ...: there the blur is computed at those positions alone (a depthwise conv at
  stride s, padding 1: its output j is the stride-1 blur's output at s * j, for odd
  and even sizes alike, as both have (H - 1) // s + 1 positions), and the conv runs
  at stride 1; 1 / s^2 of the blur's work.
- ``'shifted'``: the same positions as ``'conv'``, each blur as sums of shifted views
  of the zero-padded input, one 1-D [1,2,1] pass per axis, in float32 (or wider):
  pointwise work that ``torch.compile`` can fuse with the BatchNorm and ReLU before
  it instead of calling a depthwise convolution kernel. On a CPU it is slower than
  ``'conv'``, in eager mode (each sum is a pass over memory) and compiled alike
  (BENCHMARKS.md,
  "BlurPool forms"), so it is not the default.

The forms agree up to float rounding (the sums run in another order).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BLUR_FORMS = ('conv', 'shifted', 'reference')
_TAPS = (1.0, 2.0, 1.0)  # the binomial filter along each axis; sums to 4


def _sampled_pass(x: torch.Tensor, dim: int, stride: int) -> torch.Tensor:
    """[1,2,1] / 4 along ``dim`` of ``x`` (already zero-padded by 1 there), kept at
    output positions 0, stride, 2 * stride, ...: (size - 3) // stride + 1 of them."""
    size = x.shape[dim] - 2  # outputs at stride 1
    every = (slice(None),) * dim + (slice(None, None, stride),)
    low, mid, high = (x.narrow(dim, k, size)[every] for k in range(3))
    return (low + 2.0 * mid + high) * 0.25


def blur_shifted(x: torch.Tensor, stride: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """The stride-1, zero-padding-1 blur of (B, C, H, W) ``x`` at rows 0, s_h, 2 s_h, ...
    and columns 0, s_w, ...: (B, C, (H - 1) // s_h + 1, (W - 1) // s_w + 1), in ``x``'s
    dtype, summed in float32 or wider from shifted views (pointwise work for a compiler)."""
    padded = F.pad(x.to(torch.promote_types(x.dtype, torch.float32)), (1, 1, 1, 1))
    rows = _sampled_pass(padded, 2, stride[0])
    return _sampled_pass(rows, 3, stride[1]).to(x.dtype)


class BlurConv2d(nn.Conv2d):
    """A Conv2d that low-pass filters its input before the (strided) convolution.

    The blur is a fixed, depthwise, normalised [1,2,1] x [1,2,1] / 16 filter applied
    at stride 1 with zero padding 1, so spatial shapes are those of the plain conv.
    Zero padding (not reflect) matches the ffcv / rn50 reference recipe whose
    accuracies this project reproduces, and it avoids the extra padded copy that
    ``F.pad(mode='reflect')`` makes; the darkened one-pixel border is harmless as
    the following conv zero-pads too. The filter is a non-persistent buffer, so the
    state_dict is exactly that of ``nn.Conv2d``. ``form`` (one of :data:`BLUR_FORMS`,
    see the module's docstring) picks how the same function is computed.
    """

    form = 'conv'  # class default; set per instance with set_blur_form

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        taps = torch.tensor(_TAPS)
        kernel = torch.outer(taps, taps) / 16.0
        self.register_buffer('blur_filter', kernel.expand(self.in_channels, 1, 3, 3).clone(),
                             persistent=False)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> 'BlurConv2d':
        """A BlurConv2d sharing ``conv``'s hyper-parameters and parameter tensors."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                  padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                  bias=conv.bias is not None, padding_mode=conv.padding_mode,
                  device=conv.weight.device, dtype=conv.weight.dtype)
        new.weight = conv.weight
        new.bias = conv.bias
        return new

    @property
    def samples_blur(self) -> bool:
        """Whether the conv reads the blurred map only at strided positions (a 1x1 conv
        with no padding), so that the blur need only be computed there."""
        return (self.kernel_size == (1, 1) and self.padding in ((0, 0), 'valid')
                and self.stride != (1, 1))

    def blur(self, x: torch.Tensor, stride: tuple[int, int] = (1, 1)) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, (H - 1) // s_h + 1, (W - 1) // s_w + 1): each channel
        blurred independently (zero padding 1), at every ``stride``-th row and column."""
        return F.conv2d(x, self.blur_filter.to(x.dtype), stride=stride, padding=1,
                        groups=self.in_channels)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The definition: the blur at every position, then the strided conv."""
        return super().forward(self.blur(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        form = self.form
        if form == 'reference':
            return self.reference(x)
        stride = self.stride if self.samples_blur else (1, 1)
        blurred = blur_shifted(x, stride) if form == 'shifted' else self.blur(x, stride)
        if not self.samples_blur:
            return super().forward(blurred)
        return F.conv2d(blurred, self.weight, self.bias, stride=1, padding=0,
                        groups=self.groups)


def set_blur_form(model: nn.Module, form: str) -> int:
    """Sets ``form`` (one of :data:`BLUR_FORMS`) on every BlurConv2d in ``model``;
    returns how many. The function computed stays the same."""
    if form not in BLUR_FORMS:
        raise ValueError(f'unknown blur form {form!r}; choose one of {", ".join(BLUR_FORMS)}')
    convs = [m for m in model.modules() if isinstance(m, BlurConv2d)]
    for conv in convs:
        conv.form = form
    return len(convs)
