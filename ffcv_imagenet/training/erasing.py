"""Random erasing (coarse dropout) of a normalised device batch.

Each image, with probability ``prob``, gets one rectangle replaced: by zeros (the
dataset mean, since the batch is already normalised) or by per-pixel standard
normal noise (``mode='pixel'``, as timm's default). The rectangle's area is a
fraction in [``min_area``, ``max_area``] of the image and its aspect ratio is
log-uniform in [``min_aspect``, 1 / ``min_aspect``], clipped to the image; its
position is uniform. All boxes of a batch are drawn at once from torch's CPU
generator (seeded per step by the training loop, so a resumed run draws the same
ones) and applied as one masked write on the device: no per-image loop there.
"""
from __future__ import annotations

import math

import torch

MODES = ('const', 'pixel')


class RandomErasing:
    """``eraser(images)`` erases in place and returns ``images`` (B, C, H, W)."""

    def __init__(self, prob: float, *, min_area: float = 0.02, max_area: float = 1 / 3,
                 min_aspect: float = 0.3, mode: str = 'const'):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        if not 0.0 < min_area <= max_area <= 1.0:
            raise ValueError(f"need 0 < min_area <= max_area <= 1, got {min_area}, {max_area}")
        if not 0.0 < min_aspect <= 1.0:
            raise ValueError(f"min_aspect must be in (0, 1], got {min_aspect}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.prob, self.min_area, self.max_area = prob, min_area, max_area
        self.min_aspect, self.mode = min_aspect, mode

    @property
    def enabled(self) -> bool:
        return self.prob > 0

    def boxes(self, batch: int, height: int, width: int) -> torch.Tensor:
        """(batch, 4) int64 boxes (top, left, height, width) in pixels; images that
        are not erased get height and width 0."""
        erase = torch.rand(batch) < self.prob
        area = torch.empty(batch).uniform_(self.min_area, self.max_area) * height * width
        log_aspect = torch.empty(batch).uniform_(math.log(self.min_aspect),
                                                 -math.log(self.min_aspect))
        aspect = log_aspect.exp()
        box_h = (area * aspect).sqrt().round().clamp(1, height).long()
        box_w = (area / aspect).sqrt().round().clamp(1, width).long()
        top = (torch.rand(batch) * (height - box_h + 1)).long()
        left = (torch.rand(batch) * (width - box_w + 1)).long()
        return torch.stack([top, left, box_h * erase, box_w * erase], dim=1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        box = self.boxes(batch, height, width).to(images.device, non_blocking=True)
        rows = torch.arange(height, device=images.device).view(1, height, 1)
        cols = torch.arange(width, device=images.device).view(1, 1, width)
        top, left, box_h, box_w = (box[:, i].view(batch, 1, 1) for i in range(4))
        inside = ((rows >= top) & (rows < top + box_h) & (cols >= left)
                  & (cols < left + box_w)).unsqueeze(1)  # (B, 1, H, W)
        if self.mode == 'const':
            return images.masked_fill_(inside, 0.0)
        noise = torch.randn(images.shape, dtype=images.dtype, device=images.device)
        return images.copy_(torch.where(inside, noise, images))
