"""Exports (training/export.py): each format, loaded back as a user loads it, computes
the model's function in eval mode and carries the classes and preprocessing; an export
that computes another function fails and leaves nothing; torchvision's format refuses
BlurPool; a .pt2 and an .onnx run without this package."""
import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from ffcv_imagenet.training import export
from ffcv_imagenet.training.export import (ExportError, ModelCard, check_batch, export_model,
                                           load_export)
from ffcv_imagenet.training.models import NotTorchvisionError, build_model, \
    to_torchvision_state_dict
from tests.support import ROOT

CLASSES = ('n01', 'n02', 'n03')
# the onnx format needs the export extra, which CI's GPU-image environment leaves out
HAS_ONNX = all(importlib.util.find_spec(name) for name in ('onnx', 'onnxscript', 'onnxruntime'))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="the export extra (onnx) is not installed")


def card(resolution=32, blurpool=True):
    return ModelCard(arch='resnet18', classes=CLASSES, names=('cat', 'dog', 'emu'),
                     mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), resolution=resolution,
                     crop_ratio=0.875, tta=True, blurpool=blurpool, weights='raw',
                     source='x.pt')


def network(blurpool=True, seed=0):
    """A ResNet-18 whose BatchNorm statistics differ from the defaults (eval mode shows)."""
    torch.manual_seed(seed)
    model = build_model('resnet18', len(CLASSES), blurpool=blurpool, channels_last=True)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 2.0)
    return model.train()  # export must put it in eval mode itself


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """fmt -> (path, the model it was written from): pt2 and onnx of a BlurPool model
    at 48 px, torchvision of a plain one."""
    folder = tmp_path_factory.mktemp('exports')
    made = {}
    for fmt, blurpool in (('pt2', True), ('onnx', True), ('torchvision', False)):
        if fmt == 'onnx' and not HAS_ONNX:
            continue
        model = network(blurpool)
        export_model(model, card(48, blurpool), folder / f'model.{fmt}', fmt)
        made[fmt] = folder / f'model.{fmt}', model
    return made


@pytest.mark.parametrize('fmt', ['pt2', pytest.param('onnx', marks=needs_onnx), 'torchvision'])
def test_each_format_loaded_back_computes_the_models_eval_function(exported, fmt):
    path, model = exported[fmt]
    loaded, saved_card = load_export(path, fmt)
    model.eval()
    # another batch size and another side than the export was checked on
    for shape in ((1, 3, 48, 48), (3, 3, 64, 80)):
        images = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            torch.testing.assert_close(loaded(images), model(images), atol=1e-4, rtol=0)
    assert saved_card == card(48, fmt != 'torchvision')


def test_the_card_keeps_classes_names_and_preprocessing(exported):
    _, saved = load_export(exported['pt2'][0])
    assert (saved.classes, saved.names) == (CLASSES, ('cat', 'dog', 'emu'))
    assert (saved.mean, saved.std, saved.resolution, saved.crop_ratio) == (
        (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), 48, 0.875)


def test_an_export_that_computes_another_function_fails_and_leaves_nothing(
        tmp_path, monkeypatch, fmt='torchvision'):
    writer = export._WRITERS[fmt]

    def write_other_weights(model, card, path, batch):
        with torch.no_grad():
            model.fc.bias.add_(1e-3)  # a copy: the caller's model stays as it was
        writer(model, card, path, batch)
    monkeypatch.setitem(export._WRITERS, fmt, write_other_weights)
    target = tmp_path / 'out' / f'model.{fmt}'
    with pytest.raises(ExportError, match=r'computes another function.*differ .* by up '
                                          r'to 0\.001'):
        export_model(network(blurpool=fmt != 'torchvision'), card(32, fmt != 'torchvision'),
                     target, fmt)
    assert list(tmp_path.iterdir()) == []  # nor the folder it made


def test_torchvision_refuses_a_blurpool_model_and_names_the_formats_that_keep_it(tmp_path):
    model = network(blurpool=True)
    with pytest.raises(NotTorchvisionError, match=r'BlurPool.*pt2 or onnx'):
        export_model(model, card(), tmp_path / 'model.pth', 'torchvision')
    with pytest.raises(NotTorchvisionError, match=r'pt2 or onnx'):
        to_torchvision_state_dict(model)
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_no_export_is_one_error(tmp_path):
    (tmp_path / 'junk.pt2').write_bytes(b'not a zip')
    with pytest.raises(ExportError, match=r'cannot read .*junk\.pt2 as a pt2 export'):
        load_export(tmp_path / 'junk.pt2')
    torch.save({'w': torch.zeros(1)}, tmp_path / 'weights.pth')
    with pytest.raises(ExportError, match=r'weights\.pth\.json not found'):
        load_export(tmp_path / 'weights.pth')


@pytest.mark.parametrize('fmt', ['pt2', pytest.param('onnx', marks=needs_onnx)])
def test_the_export_runs_without_this_package(exported, fmt):
    """In a fresh interpreter where importing ffcv_imagenet fails."""
    path = str(exported[fmt][0])
    run = {
        'pt2': ("extra = {'model_card.json': ''}\n"
                f"logits = torch.export.load({path!r}, extra_files=extra).module()(x)\n"
                "card = extra['model_card.json']\n"),
        'onnx': ("import onnxruntime\n"
                 f"s = onnxruntime.InferenceSession({path!r}, "
                 "providers=['CPUExecutionProvider'])\n"
                 "logits = torch.from_numpy(s.run(None, {s.get_inputs()[0].name: x.numpy()})[0])\n"
                 "card = s.get_modelmeta().custom_metadata_map['model_card.json']\n")}[fmt]
    code = ("import sys, json, torch\n"
            "sys.modules['ffcv_imagenet'] = None\n"
            "x = torch.zeros(2, 3, 48, 48)\n" + run +
            "print(json.dumps([logits.tolist(), json.loads(card)]))\n")
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=ROOT.parent, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    logits, saved_card = json.loads(done.stdout.splitlines()[-1])
    with torch.no_grad():
        expected = exported[fmt][1].eval()(torch.zeros(2, 3, 48, 48))
    torch.testing.assert_close(torch.tensor(logits), expected, atol=1e-4, rtol=0)
    assert saved_card['classes'] == list(CLASSES) and saved_card['resolution'] == 48


def test_the_check_batch_is_noise_at_the_cards_resolution():
    batch = check_batch(card(40))
    assert batch.shape == (2, 3, 40, 40) and batch.std() > 0.5
    torch.testing.assert_close(batch, check_batch(card(40)), rtol=0, atol=0)
