"""torch.compile for a run (training/compiled.py): validation's partial last batch is
padded to the full one, with the same logits and no second compilation; dynamo's
cache is raised, never lowered, to the shapes a run meets; the modes and backends
are checked before anything compiles."""
import pytest
import torch

from ffcv_imagenet.training.compiled import EvalCompiler, FixedBatch, allow_shapes, \
    compiled, graphs_compiled, shape_count
from ffcv_imagenet.training.models import build_model


def _batch(count, resolution=32):
    images = torch.randn(count, 3, resolution, resolution)
    return images.contiguous(memory_format=torch.channels_last)


@pytest.fixture(scope='module')
def network():
    torch.manual_seed(0)
    return build_model('resnet18', 4, blurpool=True, channels_last=True).eval()


@torch.no_grad()
def test_a_partial_batch_is_padded_and_scored_like_the_network_alone(network):
    padded = FixedBatch(network, 8)
    for count in (8, 5, 1):
        images = _batch(count)
        assert torch.allclose(padded(images), network(images), atol=1e-5, rtol=0)
        assert padded(images).shape == (count, 4)


@torch.no_grad()
def test_a_compiled_forward_compiles_once_for_full_and_partial_batches(network):
    torch._dynamo.reset()  # another test's compiled ResNet would serve this one
    forward = EvalCompiler(8, backend='eager').wrap(network)
    before = graphs_compiled()
    for count in (8, 3, 8, 7):
        images = _batch(count)
        assert torch.allclose(forward(images), network(images), atol=1e-5, rtol=0)
    assert graphs_compiled() - before == 1
    forward(_batch(4, resolution=48))  # a new resolution is a new shape
    assert graphs_compiled() - before == 2


def test_an_eval_compiler_wraps_each_network_once(network):
    evaluator = EvalCompiler(8, backend='eager')
    assert evaluator.wrap(network) is evaluator.wrap(network)


def test_the_shape_limit_is_raised_to_a_runs_shapes_and_never_lowered():
    config = torch._dynamo.config
    name = 'recompile_limit' if hasattr(config, 'recompile_limit') else 'cache_size_limit'
    before = getattr(config, name)
    try:
        allow_shapes(before + 5)
        assert getattr(config, name) == before + 5
        allow_shapes(1)
        assert getattr(config, name) == before + 5
    finally:
        setattr(config, name, before)
    # every training shape, validation's for raw and EMA weights, and some room
    assert shape_count(3, 2) > 3 + 2


def test_modes_and_backends_are_checked_before_compiling(network):
    with pytest.raises(ValueError, match='model.compile_mode'):
        compiled(network, 'fastest')
    with pytest.raises(ValueError, match='needs model.compile_backend=inductor'):
        compiled(network, 'reduce-overhead', backend='eager')
