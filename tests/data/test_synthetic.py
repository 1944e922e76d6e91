"""The generated ImageNet-like tree (data/synthetic.py): reproducible bytes, the
layouts and names, classes a trivial classifier can learn."""
import hashlib

import numpy as np
from PIL import Image

from ffcv_imagenet.data.folders import SYNSET_FILE, find_classes
from ffcv_imagenet.data.synthetic import class_name, class_wnid, generate


def _digest(root):
    files = sorted(p for p in root.rglob('*') if p.is_file())
    return [(str(p.relative_to(root)), hashlib.sha256(p.read_bytes()).hexdigest()) for p in files]


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = generate(tmp_path / 'a', classes=2, train_per_class=3, val_per_class=1, seed=7)
    b = generate(tmp_path / 'b', classes=2, train_per_class=3, val_per_class=1, seed=7, workers=2)
    c = generate(tmp_path / 'c', classes=2, train_per_class=3, val_per_class=1, seed=8)
    assert _digest(a) == _digest(b)
    assert [h for _, h in _digest(a)] != [h for _, h in _digest(c)]


def test_layout_sizes_and_names(synth):
    classes = find_classes(synth / 'train')
    assert classes == [class_wnid(i) for i in range(4)] == find_classes(synth / 'val')
    files = sorted((synth / 'train').rglob('*.JPEG'))
    assert len(files) == 4 * 12
    sizes = np.array([Image.open(f).size for f in files])
    assert sizes.min() >= 64 and sizes.max() <= 500
    assert len({tuple(s) for s in sizes}) > 10  # sizes vary like photos
    mapping = (synth / SYNSET_FILE).read_text().splitlines()
    assert mapping[1] == f"{class_wnid(1)} {class_name(1)}"


def _centre_colour(path):
    """Saturation-weighted hue histogram (20 bins) of the central quarter."""
    hsv = np.asarray(Image.open(path).convert('HSV'), dtype=np.float64)
    h, w, _ = hsv.shape
    crop = hsv[h // 4: 3 * h // 4, w // 4: 3 * w // 4].reshape(-1, 3)
    hist = np.bincount((crop[:, 0] * 20 // 256).astype(int), weights=crop[:, 1], minlength=20)
    return hist / hist.sum()


def test_classes_are_learnable_by_a_trivial_classifier(tmp_path):
    """Nearest class-mean hue histogram of a centre crop already beats chance by far, so a
    ResNet that sees crops and flips has a signal to learn."""
    root = generate(tmp_path, classes=10, train_per_class=8, val_per_class=4, seed=1, workers=2)
    classes = find_classes(root / 'train')
    means = np.stack([np.mean([_centre_colour(f) for f in (root / 'train' / c).iterdir()], 0)
                      for c in classes])
    correct = total = 0
    for label, c in enumerate(classes):
        for f in (root / 'val' / c).iterdir():
            guess = np.argmin(((means - _centre_colour(f)) ** 2).sum(1))
            correct += int(guess == label)
            total += 1
    assert correct / total > 0.5  # chance is 0.1
