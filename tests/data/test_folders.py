"""Listing a split (data/folders.py): class trees as torchvision's ImageFolder
labels them, flat folders with a label file, Tiny ImageNet's layout, subsets."""
import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from torchvision.datasets import ImageFolder

from ffcv_imagenet.data.folders import (DatasetError, list_flat, list_tree,
                                        read_label_file, stratified_subset)


def test_class_mapping_equals_torchvision_imagefolder(synth):
    samples, classes = list_tree(synth / 'train')
    reference = ImageFolder(str(synth / 'train'))
    assert classes == reference.classes
    assert samples == [(p, l) for p, l in reference.samples]


def _flatten_val(synth, tmp_path):
    flat = tmp_path / 'flat'
    flat.mkdir()
    rows = []
    for i, path in enumerate(sorted((synth / 'val').rglob('*.JPEG'), key=lambda p: p.name)):
        image_id = f"ILSVRC2012_val_{i + 1:08d}"
        shutil.copy(path, flat / f"{image_id}.JPEG")
        rows.append((image_id, f"{path.parent.name} 1 2 30 40 {path.parent.name} 5 6 7 8", path))
    label_file = tmp_path / 'LOC_val_solution.csv'
    with open(label_file, 'w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(['ImageId', 'PredictionString'])
        writer.writerows(r[:2] for r in rows)
    return flat, label_file, rows


def test_flat_val_with_label_file_gives_the_tree_labels(synth, tmp_path):
    _, classes = list_tree(synth / 'train')
    tree, _ = list_tree(synth / 'val', classes)
    flat, label_file, rows = _flatten_val(synth, tmp_path)
    flat_samples = list_flat(flat, label_file, classes)
    source_of = {f"{image_id}.JPEG": path for image_id, _, path in rows}
    assert [l for _, l in flat_samples] == [l for _, l in tree]
    tree_label = {p: l for p, l in tree}
    for path, label in flat_samples:
        assert tree_label[str(source_of[path.rsplit('/', 1)[1]])] == label


def test_flat_val_errors_name_the_file(synth, tmp_path):
    _, classes = list_tree(synth / 'train')
    flat, label_file, _ = _flatten_val(synth, tmp_path)
    (flat / 'stray.JPEG').write_bytes(b'x')
    with pytest.raises(DatasetError, match='stray.JPEG'):
        list_flat(flat, label_file, classes)
    with pytest.raises(DatasetError, match='label file not found'):
        read_label_file(tmp_path / 'nope.csv')
    with pytest.raises(DatasetError, match='not in the train class list'):
        list_flat(flat, label_file, classes[:2])


def test_tree_errors(synth, tmp_path):
    with pytest.raises(DatasetError, match='data dir not found'):
        list_tree(tmp_path / 'missing')
    (tmp_path / 'split' / 'n0001').mkdir(parents=True)
    with pytest.raises(DatasetError, match='has no images.*n0001'):
        list_tree(tmp_path / 'split')
    _, classes = list_tree(synth / 'train')
    with pytest.raises(DatasetError, match='not in the train class list'):
        list_tree(synth / 'val', classes[:3])


def test_subset_sizes_stratification_and_seed():
    labels = np.repeat(np.arange(5), [100, 100, 100, 50, 50])
    chosen = stratified_subset(labels, 80, seed=0)
    assert len(chosen) == 80 and len(set(chosen)) == 80
    assert list(chosen) == sorted(chosen)
    assert np.bincount(labels[chosen]).tolist() == [20, 20, 20, 10, 10]
    assert list(stratified_subset(labels, 80, seed=0)) == list(chosen)
    assert list(stratified_subset(labels, 80, seed=1)) != list(chosen)
    odd = stratified_subset(labels, 7, seed=0)
    assert len(odd) == 7 and np.bincount(labels[odd], minlength=5).max() <= 2
    assert len(stratified_subset(labels, 0, seed=0)) == len(labels)
    assert len(stratified_subset(labels, 10_000, seed=0)) == len(labels)


def test_nested_class_folders_are_listed_and_labelled_as_imagefolder_does(tmp_path):
    """Images in sub-folders (any depth) belong to the class folder above them, in
    ImageFolder's order; other files are left out."""
    from PIL import Image
    layout = ['b/top.jpg', 'b/images/x_2.JPEG', 'b/images/x_10.JPEG', 'b/images/deep/z.png',
              'a/one.JPEG', 'a/sub/two.jpeg', 'a/sub/notes.txt', 'a/a_boxes.txt',
              'c/images/only.webp']
    for name in layout:
        path = tmp_path / 'train' / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith('.txt'):
            path.write_text('not an image')
        else:
            Image.new('RGB', (4, 4)).save(path, format='PNG')
    samples, classes = list_tree(tmp_path / 'train')
    reference = ImageFolder(str(tmp_path / 'train'))
    assert classes == reference.classes == ['a', 'b', 'c']
    assert samples == [(p, l) for p, l in reference.samples]
    assert len(samples) == 7


def test_the_tiny_imagenet_layout_reads_with_its_annotations_and_names(tmp_path):
    from ffcv_imagenet.data.folders import list_annotated, read_synset_names
    from ffcv_imagenet.data.synthetic import class_name, class_wnid, generate
    root = generate(tmp_path / 'tiny', classes=3, train_per_class=4, val_per_class=2,
                    layout='tiny')
    samples, classes = list_tree(root / 'train')
    assert samples == [(p, l) for p, l in ImageFolder(str(root / 'train')).samples]
    assert classes == [class_wnid(c) for c in range(3)]
    assert all('/images/' in path for path, _ in samples) and len(samples) == 12
    val = list_annotated(root / 'val', root / 'val' / 'val_annotations.txt', classes)
    annotated = dict(line.split('\t')[:2] for line in
                     (root / 'val' / 'val_annotations.txt').read_text().splitlines())
    assert len(val) == 6
    assert all(classes[label] == annotated[Path(path).name] for path, label in val)
    assert read_synset_names(root / 'words.txt', classes) == [class_name(c) for c in range(3)]
    # a shuffled annotation file labels the same files the same way
    lines = (root / 'val' / 'val_annotations.txt').read_text().splitlines()
    (tmp_path / 'shuffled.txt').write_text('\n'.join(reversed(lines)) + '\n')
    assert list_annotated(root / 'val', tmp_path / 'shuffled.txt', classes) == val


@pytest.mark.parametrize('content, message', [
    ('val_0.JPEG\n', "expected 'file<TAB>wnid'"),
    ('val_0.JPEG\tn99999999\n', 'not in the train class list'),
    ('', 'has no row in'),
])
def test_bad_tiny_annotations_name_the_file(tmp_path, content, message):
    from ffcv_imagenet.data.folders import list_annotated
    from ffcv_imagenet.data.synthetic import generate
    root = generate(tmp_path / 'tiny', classes=2, train_per_class=0, val_per_class=1,
                    layout='tiny')
    bad = tmp_path / 'val_annotations.txt'
    bad.write_text(content)
    with pytest.raises(DatasetError, match=message):
        list_annotated(root / 'val', bad, ['n01000000', 'n01000001'])
