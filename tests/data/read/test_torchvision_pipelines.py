"""torchvision's standard evaluation of a folder (data/read/torchvision_pipelines.py:
shorter side resized, centre crop, ImageNet normalisation) against a computation by
hand: PIL resize and numpy crop, the model run image by image, hits counted; the
folder's classes must be the run's."""
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ffcv_imagenet.data.folders import DatasetError
from ffcv_imagenet.data.read.torchvision_pipelines import (OnDevice, list_eval_folder,
                                                           standard_eval_loader)
from ffcv_imagenet.training.evaluate import evaluate
from ffcv_imagenet.training.optim import resolve_precision
from tests.support import EVAL_CROP as CROP, EVAL_RESIZE as RESIZE, by_hand, hits_by_hand


CPU = torch.device('cpu')


@pytest.fixture(scope='module')
def tiny_folder(tmp_path_factory):
    """8 classes x 3 images of 20-90 px a side, landscape and portrait, one grayscale
    and one PNG (ImageFolder reads both as RGB)."""
    root = tmp_path_factory.mktemp('standard') / 'val'
    rng = np.random.default_rng(0)
    classes = [f'n{index:08d}' for index in range(8)]
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for index in range(3):
            height, width = rng.integers(20, 90, size=2)
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            pixels[..., label % 3] //= 2  # a class colour cast for the model to see
            image = Image.fromarray(pixels)
            if (label, index) == (2, 1):
                image = image.convert('L')
            suffix = '.png' if (label, index) == (5, 0) else '.JPEG'
            image.save(root / name / f'img_{index}{suffix}')
    return root, classes


def tiny_model(classes: int) -> nn.Module:
    """Max-pooled features: its predictions vary between images (an average-pooled
    random network tends to name one class for all)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.AdaptiveMaxPool2d(2),
                         nn.Flatten(), nn.Linear(64, classes))


def test_the_standard_eval_matches_a_computation_by_hand(tiny_folder):
    root, classes = tiny_folder
    model = tiny_model(len(classes))
    loader = standard_eval_loader(root, classes, resize=RESIZE, crop=CROP, batch_size=5,
                                  workers=0)
    images, labels, skipped = next(iter(loader))
    assert images.shape == (5, 3, CROP, CROP) and labels.tolist() == [0, 0, 0, 1, 1]
    assert skipped == []
    torch.testing.assert_close(images[4], by_hand(root / classes[1] / 'img_1.JPEG'),
                               atol=1e-6, rtol=0)
    result, = evaluate([model], OnDevice(loader, CPU, channels_last=False),
                       precision=resolve_precision('off', CPU), tta=False, device=CPU,
                       all_ranks=False)
    top1, top5, count, predicted = hits_by_hand(model, root, classes)
    assert len(predicted) > 1 and 0 < top5 < count  # the counts can tell labels apart
    assert result['images'] == count == 24
    assert result['top1'] == pytest.approx(top1 / count)
    assert result['top5'] == pytest.approx(top5 / count)


def test_class_folders_must_be_the_runs_classes(tiny_folder, tmp_path):
    root, classes = tiny_folder
    with pytest.raises(DatasetError, match=r'not in the class list: 1 \(n00000007\)'):
        list_eval_folder(root, classes[:7])
    with pytest.raises(DatasetError, match=r'classes without a folder: 1 \(n99999999\)'):
        list_eval_folder(root, classes + ['n99999999'])
    with pytest.raises(DatasetError, match='folder not found'):
        list_eval_folder(tmp_path / 'nowhere', classes)


def test_tiny_imagenet_val_is_labelled_by_its_annotations(tmp_path):
    (tmp_path / 'images').mkdir()
    rows = []
    for index, wnid in enumerate(['n2', 'n1', 'n2']):
        Image.new('RGB', (8, 8)).save(tmp_path / 'images' / f'val_{index}.JPEG')
        rows.append(f'val_{index}.JPEG\t{wnid}\t0\t0\t8\t8')
    (tmp_path / 'val_annotations.txt').write_text('\n'.join(rows) + '\n')
    samples = list_eval_folder(tmp_path, ['n1', 'n2'])
    assert [(os.path.basename(p), label) for p, label in samples] == [
        ('val_1.JPEG', 0), ('val_0.JPEG', 1), ('val_2.JPEG', 1)]
