"""The training config's checks (cli/train_config.py)."""
import pytest

from ffcv_imagenet.cli.config import ConfigError


def test_global_batch_size_must_divide_by_the_world_size():
    from ffcv_imagenet.cli.train_config import per_gpu_batch, resolution_stages
    config = {'training.global_batch_size': 1024, 'training.batch_size': 7,
              'resolution.stages': '', 'training.epochs': 10}
    assert per_gpu_batch(config, 8, None) == 128
    assert per_gpu_batch({**config, 'training.global_batch_size': 0}, 8, None) == 7
    with pytest.raises(ConfigError, match='global_batch_size=1024 is not divisible by the 3'):
        per_gpu_batch(config, 3, None)
    staged = {**config, 'training.global_batch_size': 0, 'resolution.stages': '0:64:32,5:96:16'}
    assert per_gpu_batch(staged, 8, resolution_stages(staged)) == 32  # the first stage's
