"""Validation (training/evaluate.py) against sums worked out by hand: top-1, top-5 and
the mean loss over images, the test-time flip, several models in one pass (raw and EMA
weights: the split decoded once), the EMA's BatchNorm statistics, also inside a process
group. Tiny models and hand-made batches only."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ffcv_imagenet.training import evaluate as evaluation
from ffcv_imagenet.training.ema import ModelEMA
from ffcv_imagenet.training.evaluate import evaluate, validate
from ffcv_imagenet.training.models import build_model
from ffcv_imagenet.training.optim import resolve_precision
from tests.support import random_batches


CPU = torch.device('cpu')

OFF = resolve_precision('off', CPU)

C = 7  # classes


class RowLogits(nn.Module):
    """Logits = ``scale`` x the first ``C`` pixels of row 0, channel 0. Images are
    ``(B, 3, 1, 2C)``, so the mirrored image shows the last ``C`` pixels reversed:
    a row ``[a, reversed(b)]`` scores ``a`` and, mirrored, ``b``. In train mode class
    0 gets +100, which validation (eval mode) must never see."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        logits = self.scale * x[:, 0, 0, :C].clone()
        if self.training:
            logits[:, 0] += 100.0
        return logits


def images_for(plain: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """(B, 3, 1, 2C) images whose RowLogits are ``plain`` and, flipped, ``mirrored``."""
    row = torch.cat([plain, mirrored.flip(-1)], dim=1)
    return row[:, None, None, :].expand(-1, 3, 1, -1).contiguous()


def ranked(label_rank: int, label: int) -> torch.Tensor:
    """Logits over C classes where ``label`` is the ``label_rank``-th largest (1 = top)."""
    others = [c for c in range(C) if c != label]
    order = others[:label_rank - 1] + [label] + others[label_rank - 1:]
    logits = torch.empty(C)
    for position, c in enumerate(order):  # distinct values, largest first
        logits[c] = float(C - position)
    return logits


# Five images in two batches of 3 and 2. Without the flip the label ranks are 1, 3, 6,
# 5, 1: top-1 2/5, top-5 4/5. The mirrored logits (ten times larger) rank the labels
# 1, 1, 1, 1, 3, and so does their average with the plain ones: top-1 4/5, top-5 5/5.
LABELS = torch.tensor([0, 1, 2, 3, 4])

PLAIN = torch.stack([ranked(r, int(y)) for r, y in zip([1, 3, 6, 5, 1], LABELS)])

MIRRORED = 10 * torch.stack([ranked(r, int(y)) for r, y in zip([1, 1, 1, 1, 3], LABELS)])


def val_batches():
    images = images_for(PLAIN, MIRRORED)
    return [(images[:3], LABELS[:3]), (images[3:], LABELS[3:])]


def test_validation_reports_top1_top5_and_the_mean_loss_over_images():
    model = RowLogits().train()  # evaluate must switch it to eval mode
    [result] = evaluate([model], val_batches(), precision=OFF, tta=False, device=CPU)
    assert result['images'] == 5
    assert result['top1'] == pytest.approx(2 / 5)
    assert result['top5'] == pytest.approx(4 / 5)
    # the mean over the 5 images, not the mean of the two batch means
    assert result['loss'] == pytest.approx(F.cross_entropy(PLAIN, LABELS).item())
    assert not model.training


def test_the_test_time_flip_averages_each_image_with_its_mirror():
    [result] = evaluate([RowLogits()], val_batches(), precision=OFF, tta=True, device=CPU)
    averaged = (PLAIN + MIRRORED) / 2
    assert averaged.argmax(1).tolist() == [0, 1, 2, 3, 0]  # the hand-worked ranks
    assert (averaged[4] > averaged[4, 4]).sum() == 2
    assert result['top1'] == pytest.approx(4 / 5)
    assert result['top5'] == pytest.approx(5 / 5)
    assert result['loss'] == pytest.approx(F.cross_entropy(averaged, LABELS).item())
    assert result['images'] == 5


def test_several_models_are_scored_separately_in_one_pass():
    plain, negated = RowLogits(1.0), RowLogits(-1.0)
    results = evaluate([plain, negated], val_batches(), precision=OFF, tta=False, device=CPU)
    alone = [evaluate([m], val_batches(), precision=OFF, tta=False, device=CPU)[0]
             for m in (plain, negated)]
    assert results == [pytest.approx(a) for a in alone]
    assert results[1]['loss'] == pytest.approx(F.cross_entropy(-PLAIN, LABELS).item())
    assert results[1]['top1'] == pytest.approx(0.0)  # ranks 7, 5, 2, 3, 7 when negated
    assert results[1]['top5'] == pytest.approx(3 / 5)


def test_top5_with_fewer_than_five_classes_counts_every_image():
    three = nn.Linear(4, 3)
    batches = [(torch.randn(6, 4), torch.randint(0, 3, (6,)))]
    [result] = evaluate([three], batches, precision=OFF, tta=False, device=CPU)
    assert result['top5'] == 1.0 and result['images'] == 6


def test_a_split_of_one_image_is_scored_as_one_image():
    one = [(val_batches()[0][0][:1], LABELS[:1])]
    [result] = evaluate([RowLogits()], one, precision=OFF, tta=False, device=CPU)
    assert (result['top1'], result['top5'], result['images']) == (1.0, 1.0, 1)
    assert result['loss'] == pytest.approx(F.cross_entropy(PLAIN[:1], LABELS[:1]).item())


def test_an_empty_split_reports_zeros_not_an_error():
    [result] = evaluate([RowLogits()], [], precision=OFF, tta=True, device=CPU)
    assert result == {'loss': 0.0, 'top1': 0.0, 'top5': 0.0, 'images': 0}


def test_validation_draws_no_progress_bar_unless_asked(capsys):
    evaluate([RowLogits()], val_batches(), precision=OFF, tta=False, device=CPU)
    validate(RowLogits(), None, val_batches(), precision=OFF, tta=False, device=CPU)
    assert capsys.readouterr().err == ''  # every rank validates; none may print
    evaluate([RowLogits()], val_batches(), precision=OFF, tta=False, device=CPU,
             show_progress=True)
    assert 'validation' in capsys.readouterr().err


# --- raw and EMA weights -----------------------------------------------------------------

class CountingLoader:
    """A list of batches that counts how many it hands out."""

    def __init__(self, batches):
        self.batches, self.served = batches, 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            self.served += 1
            yield batch


def test_validation_decodes_the_split_once_for_raw_and_ema_weights():
    torch.manual_seed(0)
    model = build_model('resnet18', 10)
    ema = ModelEMA(model, 0.9)
    with torch.no_grad():  # make the two sets of weights differ
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    precision = resolve_precision('off', CPU)
    loader = CountingLoader(random_batches())
    both = evaluation.validate(model, ema, loader, precision=precision, tta=True, device=CPU)
    assert loader.served == len(loader)  # one pass, not one per set of weights
    alone = evaluation.evaluate([model], CountingLoader(random_batches()),
                                precision=precision, tta=True, device=CPU)[0]
    averaged = evaluation.evaluate([ema.module], CountingLoader(random_batches()),
                                   precision=precision, tta=True, device=CPU)[0]
    for key in ('loss', 'top1', 'top5'):
        assert both[f'val_{key}'] == pytest.approx(alone[key])
        assert both[f'ema_val_{key}'] == pytest.approx(averaged[key])
    assert both['val_loss'] != pytest.approx(both['ema_val_loss'])


def model_and_ema(buffers):
    """A BatchNorm model whose statistics changed after its EMA was taken."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.BatchNorm2d(3), RowLogits()).eval()
    ema = ModelEMA(module, 0.9, buffers=buffers)
    module[0].running_mean.fill_(0.5)
    module[0].running_var.fill_(4.0)
    return module, ema


def test_validate_names_the_raw_and_ema_metrics_and_gives_the_ema_the_models_statistics():
    module, ema = model_and_ema('copy')
    both = validate(module, ema, val_batches(), precision=OFF, tta=False, device=CPU)
    [raw] = evaluate([module], val_batches(), precision=OFF, tta=False, device=CPU)
    assert set(both) == {'val_loss', 'val_top1', 'val_top5',
                         'ema_val_loss', 'ema_val_top1', 'ema_val_top5'}
    for key in ('loss', 'top1', 'top5'):  # same weights, same (copied) statistics
        assert both[f'val_{key}'] == pytest.approx(raw[key])
        assert both[f'ema_val_{key}'] == pytest.approx(raw[key])
    alone = validate(module, None, val_batches(), precision=OFF, tta=True, device=CPU)
    assert set(alone) == {'val_loss', 'val_top1', 'val_top5'}


def test_an_averaging_ema_is_validated_with_its_own_statistics():
    module, ema = model_and_ema('average')  # it averages the new statistics in only when updated
    [own] = evaluate([ema.module], val_batches(), precision=OFF, tta=False, device=CPU)
    [raw] = evaluate([module], val_batches(), precision=OFF, tta=False, device=CPU)
    both = validate(module, ema, val_batches(), precision=OFF, tta=False, device=CPU)
    assert both['ema_val_loss'] == pytest.approx(own['loss'])
    assert both['val_loss'] == pytest.approx(raw['loss'])
    assert raw['loss'] != pytest.approx(own['loss'])  # so the two can be told apart
    assert torch.equal(ema.module[0].running_mean, torch.zeros(3))


def test_an_averaging_ema_validates_inside_a_process_group():
    """Under DDP each rank averaged its own statistics; rank 0's are sent to all."""
    import socket
    import torch.distributed as torch_dist
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    module = nn.Sequential(nn.BatchNorm2d(3), RowLogits()).eval()
    ema = ModelEMA(module, 0.9, buffers='average')
    ema.module[0].running_mean.fill_(0.25)
    [own] = evaluate([ema.module], val_batches(), precision=OFF, tta=False, device=CPU)
    torch_dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=0,
                                  world_size=1)
    try:
        both = validate(module, ema, val_batches(), precision=OFF, tta=False, device=CPU)
    finally:
        torch_dist.destroy_process_group()
    assert both['ema_val_loss'] == pytest.approx(own['loss'])
    assert torch.equal(ema.module[0].running_mean, torch.full((3,), 0.25))
