"""``torch.compile`` for a run: every training shape compiled once, validation too.

A run meets a handful of input shapes: one per (batch, resolution) of its schedule,
plus validation's. Compiled with static shapes (``dynamic=False``) each gets its own
specialised kernels, kept in dynamo's cache beside the others, so a shape that comes
back (training after validation, the same resolution the next epoch) reuses its code.
Two things would make it compile again, or silently fall back to eager:

* dynamo keeps at most ``recompile_limit`` entries per function (8 by default), and
  past it runs the function uncompiled: :func:`compile_for_training` raises the limit
  to the shapes the run will meet;
* validation's last batch is smaller than the others on most ranks: :class:`FixedBatch`
  pads it to the full batch (repeating its last image, which eval-mode layers score
  independently) and drops the padding's logits, so every validation batch has one
  shape.

``mode`` is ``torch.compile``'s: ``'default'``, ``'reduce-overhead'`` (CUDA graphs:
a step replays the recorded kernels, without launching each; on the CPU it is the
default), or the ``'max-autotune'`` modes (they search kernel configurations, minutes
per shape).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')


def _limit_name() -> str:
    # renamed in torch 2.6; older releases know only the first name
    config = torch._dynamo.config
    return 'recompile_limit' if hasattr(config, 'recompile_limit') else 'cache_size_limit'


def allow_shapes(count: int) -> None:
    """Lets dynamo keep compiled code for at least ``count`` input shapes (guard sets)
    of one function before it falls back to eager."""
    name = _limit_name()
    setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), count))


def compiled(module: nn.Module, mode: str = 'default', backend: str = 'inductor'):
    """``module`` compiled with static shapes. ``backend`` other than ``'inductor'``
    (``'eager'``, ``'aot_eager'``: for tests and debugging) takes no ``mode``."""
    if mode not in MODES:
        raise ValueError(f"model.compile_mode: {mode!r} is not one of {', '.join(MODES)}")
    if backend != 'inductor':
        if mode != 'default':
            raise ValueError(f"model.compile_mode={mode} needs model.compile_backend="
                             f"inductor, not {backend}")
        return torch.compile(module, dynamic=False, backend=backend)
    return torch.compile(module, dynamic=False, mode=mode)


def compile_for_training(model: nn.Module, shapes: int, mode: str = 'default',
                         backend: str = 'inductor'):
    """``model`` (plain or DDP-wrapped) compiled for a run that meets ``shapes``
    distinct input shapes in all, training and validation (see :func:`shape_count`)."""
    allow_shapes(shapes)
    return compiled(model, mode, backend)


def shape_count(train_shapes: int, eval_models: int) -> int:
    """Entries dynamo's cache needs: each training shape; validation's one shape per
    evaluated model (raw, EMA), with and without gradients' guards differing; and room
    for a shape that is not foreseen (a resumed run's partial epoch)."""
    return train_shapes + 2 * eval_models + 2


def graphs_compiled() -> int:
    """Graphs ``torch.compile`` has compiled in this process so far (dynamo's count);
    a shape met again adds none."""
    from torch._dynamo.utils import counters
    return int(counters['stats']['unique_graphs'])


def mark_step() -> None:
    """Tells CUDA graphs (``reduce-overhead``) that a new step begins, so that the
    previous step's outputs may be overwritten; nothing otherwise."""
    torch.compiler.cudagraph_mark_step_begin()


class FixedBatch(nn.Module):
    """Runs ``inner`` on batches of exactly ``batch`` images: a smaller batch
    (B, 3, H, W) is padded with copies of its last image and its (B, classes) logits
    returned alone. For evaluation: in eval mode no layer mixes images of a batch.
    The logits are copied out, since CUDA graphs would overwrite them at the next call
    (validation with flip averaging calls twice before reading)."""

    def __init__(self, inner: Callable, batch: int):
        super().__init__()
        self.inner, self.batch = inner, batch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        count = images.shape[0]
        if count < self.batch:
            # in the loader's memory format (channels-last): another would be a new guard
            padded = _like(images, self.batch)
            padded[:count] = images
            padded[count:] = images[-1:]
            images = padded
        mark_step()
        return self.inner(images)[:count].clone()


def _like(images: torch.Tensor, batch: int) -> torch.Tensor:
    """An uninitialised (batch, ...) tensor with ``images``' dtype, device and memory
    format."""
    channels_last = images.dim() == 4 and images.is_contiguous(
        memory_format=torch.channels_last) and not images.is_contiguous()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty((batch, *images.shape[1:]), dtype=images.dtype,
                       device=images.device).contiguous(memory_format=fmt)


class EvalCompiler:
    """Compiled, fixed-batch forwards of the models a run evaluates (the raw network,
    its EMA), each made once: ``wrap(module)`` returns the same wrapper every time."""

    def __init__(self, batch: int, mode: str = 'default', backend: str = 'inductor'):
        self.batch, self.mode, self.backend = batch, mode, backend
        self._made: dict[int, nn.Module] = {}

    def wrap(self, module: nn.Module) -> nn.Module:
        key = id(module)
        if key not in self._made:
            self._made[key] = FixedBatch(compiled(module, self.mode, self.backend),
                                         self.batch)
        return self._made[key]
