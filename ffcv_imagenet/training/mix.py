"""MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019) on a batch already on the
training device, with the matching soft targets:

    mixer = Mixer(1000, mixup_alpha=0.2, cutmix_alpha=1.0, label_smoothing=0.1)
    images, targets, dominant = mixer(images, labels)
    loss = F.cross_entropy(model(images), targets)     # targets: (B, C) float32

Choices:

* One ``lam`` and one method per batch, not per image: the whole batch is one lerp
  (MixUp) or one slice copy (CutMix), with no Python loop over images and no
  per-image masks, so the cost is negligible next to a ResNet-50 step.
* The partner of image i is image i-1 (the batch rolled by one). The loader already
  shuffles, so a roll pairs random images without another permutation to draw,
  store or move to the device.
* Every random draw (mix or not, which method, ``lam``, the CutMix box) comes from
  torch's global CPU RNG, so ``torch.manual_seed`` makes a run reproducible and no
  draw synchronises with the GPU. numpy and Python's ``random`` are never used.
* After CutMix ``lam`` is recomputed from the box actually pasted (clipping at the
  border shrinks it), so the targets match the pixels.
* Targets already include label smoothing, with the convention of
  ``F.cross_entropy(label_smoothing=s)``: ``(1 - s) * one_hot + s / C``. Soft
  targets are linear in the labels, so ``CE(logits, mixed_targets)`` equals
  ``lam * CE(y) + (1 - lam) * CE(y_partner)`` with smoothing on both.
* The *dominant* label (the one with weight >= 0.5) is returned for a train top-1
  that stays meaningful while mixing.
* Inputs are never modified in place: the loader may reuse its buffers.
"""
from __future__ import annotations

import math

import torch

CUTMIX, MIXUP = 'cutmix', 'mixup'


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """(B,) int64 class indices -> (B, num_classes) float32 targets on the same device:
    ``(1 - smoothing) * one_hot + smoothing / num_classes``, rows summing to 1 (the
    convention of ``F.cross_entropy(label_smoothing=smoothing)``)."""
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32,
                         device=labels.device)
    return targets.scatter_(1, labels.long().unsqueeze(1), 1.0 - smoothing + off)


def mixed_targets(labels: torch.Tensor, partner_labels: torch.Tensor, lam: float,
                  num_classes: int, smoothing: float) -> torch.Tensor:
    """(B,) int64 labels and partner labels -> (B, num_classes) float32 targets
    ``lam * smooth_one_hot(labels) + (1 - lam) * smooth_one_hot(partner_labels)``;
    ``lam`` in [0, 1] is the weight of ``labels``. Rows sum to 1."""
    own = smooth_one_hot(labels, num_classes, smoothing)
    partner = smooth_one_hot(partner_labels, num_classes, smoothing)
    return own.mul_(lam).add_(partner, alpha=1.0 - lam)


def cutmix_box(height: int, width: int, lam: float,
               generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """A box to paste for CutMix, in pixels: ``(top, bottom, left, right)``, half-open
    (rows ``top:bottom``, columns ``left:right``).

    Its sides are ``round(height * sqrt(1 - lam))`` and ``round(width * sqrt(1 - lam))``
    (area about ``(1 - lam)`` of the image) and its centre is uniform over the image
    pixels, drawn from ``generator`` (torch's global CPU RNG when None). The box is
    clipped to the image, so near a border it is smaller than those sides.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    side = math.sqrt(1.0 - lam)
    box_h, box_w = round(height * side), round(width * side)
    centre_y = int(torch.randint(0, height, (), generator=generator))
    centre_x = int(torch.randint(0, width, (), generator=generator))
    # Anchored on the unclipped corner so that an interior box is exactly box_h x box_w.
    top, left = centre_y - box_h // 2, centre_x - box_w // 2
    return (min(max(top, 0), height), min(max(top + box_h, 0), height),
            min(max(left, 0), width), min(max(left + box_w, 0), width))


def _check_fraction(name: str, value: float, *, upper_open: bool = False) -> None:
    if not (0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0):
        interval = '[0, 1)' if upper_open else '[0, 1]'
        raise ValueError(f"{name} must be in {interval}, got {value}")


class Mixer:
    """Mixes a batch with MixUp or CutMix and returns matching soft targets.

    Args:
        num_classes: C, the width of the targets.
        mixup_alpha, cutmix_alpha: ``lam ~ Beta(alpha, alpha)`` for each method; 0
            turns that method off.
        prob: probability that a batch is mixed at all.
        switch_prob: when both alphas are > 0, probability of CutMix rather than MixUp.
        label_smoothing: s in [0, 1), folded into the targets.
    Raises:
        ValueError: an argument out of range, naming it.
    """

    def __init__(self, num_classes: int, *, mixup_alpha: float = 0.0,
                 cutmix_alpha: float = 0.0, prob: float = 1.0, switch_prob: float = 0.5,
                 label_smoothing: float = 0.0):
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        for name, alpha in (('mixup_alpha', mixup_alpha), ('cutmix_alpha', cutmix_alpha)):
            if not alpha >= 0.0:  # also refuses NaN
                raise ValueError(f"{name} must be >= 0, got {alpha}")
        _check_fraction('prob', prob)
        _check_fraction('switch_prob', switch_prob)
        _check_fraction('label_smoothing', label_smoothing, upper_open=True)
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.switch_prob = float(prob), float(switch_prob)
        self.label_smoothing = float(label_smoothing)

    @property
    def enabled(self) -> bool:
        """True when some batches get mixed."""
        return self.prob > 0.0 and (self.mixup_alpha > 0.0 or self.cutmix_alpha > 0.0)

    def _draw(self) -> tuple[str, float] | None:
        """(method, lam) for the next batch, or None to leave it unmixed."""
        if not self.enabled or float(torch.rand(())) >= self.prob:
            return None
        if self.mixup_alpha > 0.0 and self.cutmix_alpha > 0.0:
            method = CUTMIX if float(torch.rand(())) < self.switch_prob else MIXUP
        else:
            method = CUTMIX if self.cutmix_alpha > 0.0 else MIXUP
        alpha = self.cutmix_alpha if method == CUTMIX else self.mixup_alpha
        concentration = torch.tensor(alpha, dtype=torch.float64)
        lam = float(torch.distributions.Beta(concentration, concentration).sample())
        return method, lam

    def __call__(self, images: torch.Tensor, labels: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mixes ``images`` (B, 3, H, W), any float dtype, memory format and device,
        with their partners ``images.roll(1, 0)``.

        Args:
            labels: (B,) int64 class indices on the same device.
        Returns:
            (images, targets, dominant): images of the same shape, dtype, memory format
            and device (the input itself when the batch is not mixed; never modified
            in place); targets (B, C) float32 soft targets including label smoothing;
            dominant (B,) int64, ``labels`` where ``lam >= 0.5`` else the partners'.
        """
        if images.ndim != 4 or labels.shape != images.shape[:1]:
            raise ValueError(f"images must be (B, C, H, W) and labels (B,), got "
                             f"{tuple(images.shape)} and {tuple(labels.shape)}")
        draw = self._draw()
        if draw is None:
            return images, smooth_one_hot(labels, self.num_classes, self.label_smoothing), labels
        method, lam = draw
        if method == MIXUP:
            # lerp(x, partner, 1 - lam) = lam * x + (1 - lam) * partner, out of place.
            mixed = images.lerp(images.roll(1, 0), 1.0 - lam)
        else:
            mixed, lam = _paste_box(images, lam)
        partner_labels = labels.roll(1, 0)
        targets = mixed_targets(labels, partner_labels, lam, self.num_classes,
                                self.label_smoothing)
        return mixed, targets, labels if lam >= 0.5 else partner_labels


def _paste_box(images: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
    """CutMix: a copy of ``images`` (B, C, H, W) with each image's partner pasted in
    one box drawn by :func:`cutmix_box`; returns it and the actual weight of the
    original, ``1 - box_area / (H * W)``."""
    height, width = images.shape[-2:]
    top, bottom, left, right = cutmix_box(height, width, lam)
    mixed = images.clone()  # keeps the memory format
    # Only the box is rolled, not the whole batch.
    mixed[:, :, top:bottom, left:right] = images[:, :, top:bottom, left:right].roll(1, 0)
    return mixed, 1.0 - (bottom - top) * (right - left) / (height * width)
