"""Tiny ImageNet's layout from the synthetic generator through the converter to one
epoch of the Tiny ImageNet recipe."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ffcv_imagenet.data.synthetic import class_name, generate
from ffcv_imagenet.training.logs import read_log

ROOT = Path(__file__).resolve().parents[1]


def _convert(*args):
    done = subprocess.run([sys.executable, 'write_datasets.py', *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_tiny_imagenet_layout_converts_and_trains_with_its_recipe(tmp_path):
    root = generate(tmp_path / 'tiny-imagenet-200', classes=4, train_per_class=16,
                    val_per_class=4, layout='tiny', workers=2)
    train, val = tmp_path / 'tiny_train.beton', tmp_path / 'tiny_val.beton'
    _convert('--cfg.split=train', f'--cfg.data_dir={root / "train"}', f'--cfg.write_path={train}',
             '--cfg.max_resolution=0')
    _convert('--cfg.split=val', f'--cfg.data_dir={root / "val"}', f'--cfg.write_path={val}',
             '--cfg.max_resolution=0', f'--cfg.classes={train}.classes.json')
    listing = json.loads(Path(f'{train}.classes.json').read_text())
    assert listing['names'] == [class_name(c) for c in range(4)]  # from words.txt
    from ffcv_imagenet.data.read.beton import check_beton
    assert check_beton(train, 4).num_samples == 64
    assert check_beton(val, 4).num_samples == 16
    folder = tmp_path / 'run'
    done = subprocess.run(
        [sys.executable, 'train_imagenet.py', '-C', 'rn50_tiny_imagenet',
         f'--data.train_dataset={train}', f'--data.val_dataset={val}',
         '--data.num_workers=2', '--training.device=cpu', '--training.batch_size=16',
         '--validation.batch_size=16', '--training.epochs=3', '--training.stop_after=1',
         '--logging.progress=0', f'--logging.folder={folder}'],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    epoch, = read_log(folder, 'epoch')
    assert epoch['resolution'] == 64 and epoch['iteration'] == 4
    assert 0 <= epoch['val_top1'] <= 1
