"""Exports of a trained classifier that keep its function, each checked before it counts.

Three formats (:data:`FORMATS`):

- ``torchvision``: a plain ``state_dict`` for ``torchvision.models.resnet18/50``
  (``torch.load`` it and ``load_state_dict``), with the model card in ``PATH.json``.
  Refused for a BlurPool model, which torchvision cannot compute
  (:class:`~.models.NotTorchvisionError`).
- ``pt2``: a ``torch.export`` program; ``torch.export.load(PATH).module()`` runs it
  without this package. The card is stored inside, as the extra file
  :data:`CARD_NAME`.
- ``onnx``: an ONNX graph (opset of torch's exporter), runnable in onnxruntime; the
  card is stored inside, as the metadata entry :data:`CARD_NAME`.

Every export takes (B, 3, H, W) float32 images, normalised with the card's mean and
std, and returns (B, num_classes) logits in eval mode; B is free. :func:`export_model`
writes under a temporary name, loads the file back as a user would and compares its
logits with the model's on a batch; only a file within :data:`TOLERANCE` is renamed to
the path asked for, so a failed export leaves nothing there.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
import torch
from torch import nn

from ..data.messages import error_line
from .models import ARCHS, to_torchvision_state_dict, unwrap

FORMATS = ('torchvision', 'pt2', 'onnx')
TOLERANCE = 1e-4  # largest |logit difference| an export may show, float32
CARD_NAME = 'model_card.json'
ONNX_PACKAGES = "onnx, onnxscript and onnxruntime (pip install 'ffcv_imagenet[export]')"


class ExportError(RuntimeError):
    """An export that could not be written, or that computes another function."""


@dataclass(frozen=True)
class ModelCard:
    """What a user of an exported classifier needs besides its weights."""
    # 'resnet18' or 'resnet50'
    arch: str
    # class ids (ImageNet wnids), in logit order
    classes: tuple[str, ...]
    # human-readable class names, one per class
    names: tuple[str, ...]
    # per-channel mean and std of the [0, 1] RGB input, subtracted then divided
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # side of the square input the model was validated at (pixels)
    resolution: int
    # centre crop side / shorter image side: the image's shorter side is resized to
    # resolution / crop_ratio pixels, then the centre resolution x resolution kept
    crop_ratio: float
    # whether validation averaged each image's logits with its mirror's
    tta: bool
    # whether the network blurs before its strided convolutions
    blurpool: bool
    # 'raw' (the trained weights) or 'ema' (their moving average)
    weights: str
    # the checkpoint the weights came from
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> 'ModelCard':
        data = json.loads(text)
        for key in ('classes', 'names', 'mean', 'std'):
            data[key] = tuple(data[key])
        return cls(**data)


def check_batch(card: ModelCard, size: int = 2, seed: int = 0) -> torch.Tensor:
    """The batch an export is checked on: (size, 3, R, R) float32 normal noise, R the
    card's resolution (pixels). Noise, not images: it exercises every logit."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 3, card.resolution, card.resolution, generator=generator)


def export_model(model: nn.Module, card: ModelCard, path: str | os.PathLike, fmt: str, *,
                 batch: torch.Tensor | None = None, tolerance: float = TOLERANCE) -> float:
    """Writes ``model`` (put in eval mode, float32, on the CPU; unchanged itself) as
    ``fmt`` at ``path`` with ``card``, after checking that the file, loaded back, gives
    the model's logits on ``batch`` (default :func:`check_batch`) within ``tolerance``.
    Returns the largest |difference| seen.
    Raises:
        ExportError: the format is unknown, its packages are missing, writing failed,
            or the loaded file computes another function; nothing is left at ``path``.
        NotTorchvisionError: ``fmt`` is 'torchvision' and the model uses BlurPool.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    plain = copy.deepcopy(unwrap(model)).float().cpu().eval()
    plain = plain.to(memory_format=torch.contiguous_format)
    batch = check_batch(card) if batch is None else batch.float().cpu()
    with torch.no_grad():
        expected = plain(batch)
    path = Path(path)
    made = _missing_parents(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(f"cannot create {path.parent}: {err.strerror or err}") from None
    temporary = _temporary(path)
    # the torchvision format's card is a file beside it, renamed in place after it
    written = [temporary] + ([_card_path(temporary)] if fmt == 'torchvision' else [])
    try:
        _WRITERS[fmt](plain, card, temporary, batch)
        if fmt == 'torchvision':
            _card_path(temporary).write_text(card.to_json())
        got = _run_back(temporary, fmt, batch)
        difference = (got.float() - expected).abs().max().item()
        if not difference <= tolerance:  # also a NaN
            raise ExportError(f"the {fmt} export computes another function: its logits "
                              f"differ from the checkpoint's by up to {difference:.3g} "
                              f"(at most {tolerance:g} allowed); nothing written at {path}")
        os.replace(temporary, path)
        if fmt == 'torchvision':
            os.replace(_card_path(temporary), _card_path(path))
        return difference
    except OSError as err:
        _remove(written, made)
        raise ExportError(f"cannot write {path}: {err.strerror or err}") from None
    except BaseException:
        _remove(written, made)
        raise


def _missing_parents(path: Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet, deepest first."""
    missing = []
    for parent in path.parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


def _remove(files: list[Path], folders: list[Path]) -> None:
    """Removes what a failed export created: its files, then the folders it made."""
    for leftover in files:
        Path(leftover).unlink(missing_ok=True)
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


def _run_back(path: Path, fmt: str, batch: torch.Tensor) -> torch.Tensor:
    """The logits of the export at ``path``, loaded as a user would, on ``batch``."""
    network = load_export(path, fmt)[0]
    try:
        with torch.no_grad():
            return network(batch)
    except Exception as err:  # the runtimes raise their own types
        raise ExportError(f"the {fmt} export, loaded back, fails on a batch of "
                          f"{tuple(batch.shape)}: {error_line(err)}") from None


def load_export(path: str | os.PathLike, fmt: str | None = None
                ) -> tuple[nn.Module, ModelCard]:
    """(a module (B, 3, H, W) float32 images -> (B, num_classes) logits in eval mode,
    the card)
    of an export written by :func:`export_model`; ``fmt`` by default from the file
    name ('.pt2', '.onnx'; anything else: 'torchvision').
    Raises:
        ExportError: the file cannot be read as that format, or holds no card.
    """
    path = Path(path)
    fmt = fmt or format_of(path)
    try:
        return _LOADERS[fmt](path)
    except ExportError:
        raise
    except Exception as err:  # torch, zipfile and onnxruntime raise types of their own
        raise ExportError(f"cannot read {path} as a {fmt} export: {error_line(err)}"
                          ) from None


def format_of(path: str | os.PathLike) -> str:
    """The export format a file name suggests: '.pt2' -> 'pt2', '.onnx' -> 'onnx',
    anything else 'torchvision'."""
    return {'.pt2': 'pt2', '.onnx': 'onnx'}.get(Path(path).suffix.lower(), 'torchvision')


def _temporary(path: Path) -> Path:
    # the suffix stays last so that exporters which look at it see the right one
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def _card_path(path: Path) -> Path:
    return Path(str(path) + '.json')


def _write_torchvision(model: nn.Module, card: ModelCard, path: Path,
                       batch: torch.Tensor) -> None:
    torch.save(to_torchvision_state_dict(model), path)


def _load_torchvision(path: Path):
    import torchvision
    card_file = _card_path(path)
    if not card_file.is_file():
        raise ExportError(f"{card_file} not found: a torchvision export keeps its classes "
                          f"and preprocessing there")
    card = ModelCard.from_json(card_file.read_text())
    if card.arch not in ARCHS:
        raise ExportError(f"{card_file}: unknown arch {card.arch!r}")
    network = getattr(torchvision.models, card.arch)(num_classes=card.num_classes)
    network.load_state_dict(torch.load(path, map_location='cpu', weights_only=True))
    return network.eval(), card


def _example(batch: torch.Tensor) -> tuple[torch.Tensor]:
    """The input the exporters trace: two images of the batch's side, at least 64 px
    unless that is 32 px or less. Batch, height and width stay free (``Dim.AUTO``)
    as far as the network allows: above 32 px for a ResNet (its last stage, at 1/32,
    has one pixel at 32 px or less, and a graph traced there only takes that range)."""
    side = batch.shape[-1] if batch.shape[-1] <= 32 else max(batch.shape[-1], 64)
    return (torch.zeros(2, 3, side, side),)


_FREE = {'x': {0: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO,
               3: torch.export.Dim.AUTO}}


def _write_pt2(model: nn.Module, card: ModelCard, path: Path, batch: torch.Tensor) -> None:
    program = torch.export.export(model, _example(batch), dynamic_shapes=_FREE)
    torch.export.save(program, path, extra_files={CARD_NAME: card.to_json()})


def _load_pt2(path: Path):
    extra = {CARD_NAME: ''}
    module = torch.export.load(path, extra_files=extra).module()
    if not extra[CARD_NAME]:
        raise ExportError(f"{path} holds no {CARD_NAME}: not written by this exporter")
    return _Program(module), ModelCard.from_json(extra[CARD_NAME])


class _Program(nn.Module):
    """An exported program's module, which refuses ``eval()`` (it is in eval mode for
    good), behind a module that allows it and still moves it between devices."""

    def __init__(self, program: nn.Module):
        super().__init__()
        self.__dict__['program'] = program  # not a child: train()/eval() skip it

    def _apply(self, fn, recurse=True):
        self.program._apply(fn)
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.program(images)


def _onnx_modules():
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401 (torch's ONNX exporter needs it)
    except ImportError as err:
        raise ExportError(f"the onnx format needs {ONNX_PACKAGES}: {err}") from None
    return onnx, onnxruntime


def _write_onnx(model: nn.Module, card: ModelCard, path: Path, batch: torch.Tensor) -> None:
    onnx, _ = _onnx_modules()
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines
        program = torch.onnx.export(model, _example(batch), dynamo=True, verbose=False,
                                    dynamic_shapes=_FREE, input_names=['images'],
                                    output_names=['logits'])
    graph = program.model_proto
    graph.metadata_props.add(key=CARD_NAME, value=card.to_json())
    onnx.save(graph, path)


def _load_onnx(path: Path):
    _, onnxruntime = _onnx_modules()
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    text = session.get_modelmeta().custom_metadata_map.get(CARD_NAME)
    if not text:
        raise ExportError(f"{path} holds no {CARD_NAME}: not written by this exporter")
    return _OnnxNetwork(session), ModelCard.from_json(text)


class _OnnxNetwork(nn.Module):
    """An onnxruntime session (CPU) as a module: images on any device in, logits on
    the same device out."""

    def __init__(self, session):
        super().__init__()
        self.session, self.input_name = session, session.get_inputs()[0].name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().float().cpu().contiguous().numpy()
        logits = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(logits).to(images.device)


_WRITERS = {'torchvision': _write_torchvision, 'pt2': _write_pt2, 'onnx': _write_onnx}
_LOADERS = {'torchvision': _load_torchvision, 'pt2': _load_pt2, 'onnx': _load_onnx}

