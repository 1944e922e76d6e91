"""The commands that use a trained model (cli/export.py, cli/predict.py,
cli/evaluate.py, cli/model_file.py), run as a user runs them: a run folder exports
without its config file and its exports compute the checkpoint's function; predict
gives the same classes for the checkpoint and each export, as the network scores the
preprocessed image; evaluate gives the numbers of the trainer's eval-only path on a
.beton and reads every folder layout alike; bad input is one line and exit 2."""
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from ffcv_imagenet.__main__ import main
from ffcv_imagenet.cli.config import ConfigError
from ffcv_imagenet.cli.evaluate import folder_samples
from ffcv_imagenet.cli.model_file import open_classifier
from ffcv_imagenet.data.folders import classes_path, load_classes
from ffcv_imagenet.training.export import load_export
from tests.support import by_hand, hits_by_hand, model_checkpoint, tiny_args
from tests.training.test_export import HAS_ONNX

RESOLUTION = 32  # pixels: what the checkpoint says it was validated at
RESIZE = round(RESOLUTION / 0.875)  # the project's preprocessing: shorter side, pixels


@pytest.fixture(scope='module')
def run_folder(betons, tmp_path_factory):
    """A run folder holding only checkpoints/final.pt (BlurPool ResNet-18, raw and EMA
    weights) over the classes of ``betons``; no config.json."""
    classes, _ = load_classes(classes_path(betons[0]))
    folder = tmp_path_factory.mktemp('model') / 'run'
    model_checkpoint(folder / 'checkpoints' / 'final.pt', classes,
                     names=[f'thing {i}' for i in range(len(classes))], resolution=RESOLUTION)
    return folder


@pytest.fixture(scope='module')
def exports(run_folder, tmp_path_factory):
    """format -> path of the run's raw weights exported by the command."""
    out = tmp_path_factory.mktemp('exports')
    made = {}
    for fmt in ('pt2', 'onnx') if HAS_ONNX else ('pt2',):
        made[fmt] = out / f'model.{fmt}'
        assert main(['export', str(run_folder), '--format', fmt, '--out', str(made[fmt])]) == 0
    return made


def network(run_folder, weights='raw'):
    return open_classifier(run_folder).networks[weights]


def one_line_error(capsys, *fragments):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith('error: '), err
    for fragment in fragments:
        assert fragment in err, err


# --- export --------------------------------------------------------------------------

@pytest.mark.parametrize('fmt', ['pt2', pytest.param('onnx', marks=pytest.mark.skipif(
    not HAS_ONNX, reason='the export extra (onnx) is not installed'))])
def test_a_run_folder_exports_without_its_config_and_keeps_the_function(
        run_folder, exports, fmt):
    assert not (run_folder / 'config.json').exists()
    loaded, card = load_export(exports[fmt])
    images = torch.randn(3, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), network(run_folder)(images),
                                   atol=1e-4, rtol=0)
    assert (card.resolution, card.crop_ratio, card.blurpool, card.weights) == (
        RESOLUTION, 0.875, True, 'raw')
    assert card.names == ('thing 0', 'thing 1', 'thing 2', 'thing 3')  # the checkpoint's


def test_export_of_the_ema_weights_computes_the_ema(run_folder, tmp_path, capsys):
    out = tmp_path / 'ema.pt2'
    assert main(['export', str(run_folder), '--format', 'pt2', '--ema', '--out', str(out)]) == 0
    assert 'ema weights' in capsys.readouterr().out
    loaded, card = load_export(out)
    images = torch.randn(2, 3, RESOLUTION, RESOLUTION)
    with torch.no_grad():
        got = loaded(images)
        torch.testing.assert_close(got, network(run_folder, 'ema')(images), atol=1e-4, rtol=0)
        assert (got - network(run_folder)(images)).abs().max() > 1e-3
    assert card.weights == 'ema'


def test_export_errors_are_one_line_exit_2_and_write_nothing(run_folder, exports, tmp_path,
                                                             capsys):
    out = tmp_path / 'model.pth'
    checkpoint = run_folder / 'checkpoints' / 'final.pt'
    before = checkpoint.read_bytes()
    for args, fragments in (
            (['--format', 'torchvision', '--out', out], ['BlurPool', 'pt2 or onnx']),
            (['--format', 'pt2', '--out', tmp_path / 'model.pt'], ['a pt2 export ends in .pt2']),
            (['--format', 'onnx', '--out', tmp_path / 'model.pt2'], ['ends in .onnx']),
            (['--format', 'torchvision', '--out', checkpoint], ['is the checkpoint being exported']),
            (['--format', 'pt2', '--out', exports['pt2']], ['exists; pass --force'])):
        assert main(['export', str(run_folder), *map(str, args)]) == 2
        one_line_error(capsys, *fragments)
    assert main(['export', str(tmp_path / 'nothing'), '--format', 'pt2', '--out',
                 str(tmp_path / 'model.pt2')]) == 2
    one_line_error(capsys, 'nothing')
    assert main(['export', str(exports['pt2']), '--format', 'pt2', '--out',
                 str(tmp_path / 'again.pt2')]) == 2
    one_line_error(capsys, 'is an export already')
    assert list(tmp_path.iterdir()) == [] and checkpoint.read_bytes() == before


def test_a_failed_export_removes_the_folders_it_made(run_folder, tmp_path, monkeypatch, capsys):
    from ffcv_imagenet.training import export

    def fail(*args):
        raise export.ExportError('the check failed')
    monkeypatch.setattr(export, '_run_back', fail)
    out = tmp_path / 'a' / 'b' / 'model.pt2'
    assert main(['export', str(run_folder), '--format', 'pt2', '--out', str(out)]) == 2
    one_line_error(capsys, 'the check failed')
    assert list(tmp_path.iterdir()) == []


def test_a_plain_model_exports_for_torchvision(betons, tmp_path, capsys):
    import torchvision
    classes, _ = load_classes(classes_path(betons[0]))
    source = model_checkpoint(tmp_path / 'plain.pt', classes, blurpool=False, ema=False)
    out = tmp_path / 'plain.pth'
    assert main(['export', str(source), '--format', 'torchvision', '--out', str(out)]) == 0
    plain = torchvision.models.resnet18(num_classes=len(classes))
    plain.load_state_dict(torch.load(out, weights_only=True))
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(images), network(source)(images),
                                   atol=1e-4, rtol=0)
    assert json.loads((tmp_path / 'plain.pth.json').read_text())['classes'] == classes


# --- predict -------------------------------------------------------------------------

def test_predict_gives_the_networks_top_k_for_the_checkpoint_and_each_export(
        run_folder, exports, synth, tmp_path, capsys):
    files = sorted((synth / 'val').rglob('*.JPEG'))[::5]
    (tmp_path / 'broken.jpg').write_bytes(b'not an image')
    listed = {}
    for model in (run_folder, *exports.values()):
        code = main(['predict', str(model), *map(str, files), str(tmp_path), '--topk', '2',
                     '--json', '--workers', '0'])
        captured = capsys.readouterr()
        assert code == 1  # one file could not be read
        assert [line for line in captured.err.splitlines() if 'skipped' in line] == [
            line for line in captured.err.splitlines() if 'broken.jpg' in line]
        listed[model] = [json.loads(line) for line in captured.out.splitlines()]
    first = listed[run_folder]
    assert [entry['file'] for entry in first] == list(map(str, files))
    for entries in listed.values():
        for a, b in zip(entries, first):
            assert [t['class'] for t in a['top']] == [t['class'] for t in b['top']]
            assert a['top'][0]['probability'] == pytest.approx(b['top'][0]['probability'],
                                                               abs=1e-4)
    with torch.no_grad():
        for entry, path in zip(first, files):
            probabilities = network(run_folder)(by_hand(path, RESIZE, RESOLUTION)[None])[0]
            probabilities = probabilities.softmax(0)
            best = probabilities.topk(2)
            assert [t['class'] for t in entry['top']] == best.indices.tolist()
            assert entry['top'][0]['probability'] == pytest.approx(best.values[0].item(),
                                                                   abs=2e-3)
            top = entry['top'][0]
            card = open_classifier(run_folder).card
            assert (top['wnid'], top['name']) == (card.classes[top['class']],
                                                  card.names[top['class']])


# --- evaluate ------------------------------------------------------------------------

def table(out):
    """(protocol, weights) -> (top-1 %, top-5 %, loss, images) from evaluate's table."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip('|').split('|')]
        if len(cells) == 7 and cells[0] in ('project', 'torchvision'):
            rows[cells[0], cells[2]] = (float(cells[3]), float(cells[4]), float(cells[5]),
                                        int(cells[6]))
    return rows


def evaluate(capsys, *args):
    assert main(['evaluate', *map(str, args), '--workers', '0']) == 0
    captured = capsys.readouterr()
    return table(captured.out), captured.err


def test_evaluate_on_the_val_beton_gives_the_eval_only_numbers(run_folder, betons,
                                                               tmp_path, capsys):
    import train_imagenet
    checkpoint = run_folder / 'checkpoints' / 'final.pt'
    folder = tmp_path / 'eval'
    assert train_imagenet.main(tiny_args(betons, folder, '--training.eval_only=1',
                                         '--ema.enabled=1',
                                         f'--checkpoint.resume={checkpoint}')) == 0
    logged = [json.loads(line) for line in (folder / 'log.jsonl').read_text().splitlines()]
    eval_only = next(record for record in logged if record['event'] == 'eval')
    capsys.readouterr()
    rows, _ = evaluate(capsys, run_folder, '--val', betons[1])
    assert set(rows) == {('project', 'raw'), ('project', 'ema')}
    for weights, prefix in (('raw', 'val_'), ('ema', 'ema_val_')):
        top1, top5, loss, images = rows['project', weights]
        assert images == 20
        assert top1 == pytest.approx(100 * eval_only[f'{prefix}top1'], abs=0.01)
        assert top5 == pytest.approx(100 * eval_only[f'{prefix}top5'], abs=0.01)
        assert loss == pytest.approx(eval_only[f'{prefix}loss'], abs=1e-3)


def flat_copies(root, tmp_path, classes):
    """The class tree ``root`` as class-index folders, as a flat folder with a
    LOC_val_solution.csv, and the flat folder's labels as single-class sets."""
    by_index, flat = tmp_path / 'v2', tmp_path / 'flat'
    flat.mkdir()
    rows, sets = ['ImageId,PredictionString'], []
    for label, wnid in enumerate(classes):
        shutil.copytree(root / wnid, by_index / str(label))
        for file in sorted((root / wnid).iterdir()):
            name = f'{wnid}_{file.name}'
            shutil.copy(file, flat / name)
            rows.append(f'{name.rsplit(".", 1)[0]},{wnid} 0 0 10 10')
    (tmp_path / 'LOC_val_solution.csv').write_text('\n'.join(rows) + '\n')
    for name in sorted(p.name for p in flat.iterdir()):
        sets.append([classes.index(name.split('_')[0])])
    return by_index, flat, sets


def test_evaluate_reads_every_folder_layout_alike(run_folder, synth, betons, tmp_path,
                                                  capsys):
    classes, _ = load_classes(classes_path(betons[0]))
    tree = synth / 'val'
    rows, _ = evaluate(capsys, run_folder, '--val', tree, '--tta', '0')  # as hits_by_hand
    assert set(rows) == {(p, w) for p in ('project', 'torchvision') for w in ('raw', 'ema')}
    top1, top5, count, _ = hits_by_hand(network(run_folder), tree, classes, resize=256,
                                        crop=224)
    assert rows['torchvision', 'raw'][0] == pytest.approx(100 * top1 / count, abs=0.01)
    assert rows['torchvision', 'raw'][3] == count == 20
    top1, _, _, _ = hits_by_hand(network(run_folder), tree, classes, resize=RESIZE,
                                 crop=RESOLUTION)
    assert rows['project', 'raw'][0] == pytest.approx(100 * top1 / count, abs=0.01)

    by_index, flat, sets = flat_copies(tree, tmp_path, classes)
    assert evaluate(capsys, run_folder, '--val', by_index, '--tta', '0')[0] == rows
    labels = tmp_path / 'LOC_val_solution.csv'
    assert evaluate(capsys, run_folder, '--val', flat, '--labels', labels, '--tta', '0')[0] == rows
    real = tmp_path / 'real.json'
    real.write_text(json.dumps(sets))
    assert evaluate(capsys, run_folder, '--val', flat, '--labels', real, '--tta', '0')[0] == rows
    # several correct classes: every image counts as a hit; none: not scored
    sets = [list(range(len(classes)))] * (len(sets) - 1) + [[]]
    real.write_text(json.dumps(sets))
    for top1, top5, _, images in evaluate(capsys, run_folder, '--val', flat, '--labels',
                                          real)[0].values():
        assert (top1, top5, images) == (100.0, 100.0, count - 1)


def test_class_index_folders_are_labelled_by_number_and_must_all_be_there(tmp_path):
    """Twelve classes: '10' sorts before '2' as text, not as a number."""
    from ffcv_imagenet.training.export import ModelCard
    classes = [f'n{i:08d}' for i in range(12)]
    card = ModelCard('resnet18', tuple(classes), tuple(classes), (0, 0, 0), (1, 1, 1), 32,
                     0.875, False, True, 'raw', 'x.pt')
    for index in range(12):
        (tmp_path / str(index)).mkdir()
        (tmp_path / str(index) / 'a.png').write_bytes(b'')
    samples = folder_samples(tmp_path, '', card)
    assert sorted((int(Path(path).parent.name), label) for path, label in samples) == [
        (index, index) for index in range(12)]
    shutil.rmtree(tmp_path / '7')
    with pytest.raises(Exception, match=r'classes without a folder: 1 \(7\)'):
        folder_samples(tmp_path, '', card)
    unsorted = dataclasses.replace(card, classes=tuple(reversed(classes)))
    with pytest.raises(ConfigError, match='not sorted'):
        folder_samples(tmp_path, '', unsorted)


def test_evaluate_names_an_unreadable_image_and_scores_the_rest(run_folder, synth, tmp_path,
                                                                capsys):
    tree = tmp_path / 'val'
    shutil.copytree(synth / 'val', tree)
    broken = next(tree.iterdir()) / 'broken.JPEG'
    broken.write_bytes(b'\xff\xd8 truncated')
    rows, err = evaluate(capsys, run_folder, '--val', tree)
    assert {images for *_, images in rows.values()} == {20}
    skipped = [line for line in err.splitlines() if line.startswith('skipped')]
    assert len(skipped) == 2 and all(str(broken) in line for line in skipped)  # 2 protocols


def test_evaluate_refuses_data_of_another_class_count(betons, tmp_path, capsys):
    classes, _ = load_classes(classes_path(betons[0]))
    model = model_checkpoint(tmp_path / 'five.pt', classes + ['n09999999'], ema=False)
    assert main(['evaluate', str(model), '--val', str(betons[1])]) == 2
    one_line_error(capsys, 'has 4 classes, the model 5')
