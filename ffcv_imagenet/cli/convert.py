"""Convert one split of an ImageNet-style folder to an FFCV .beton file.

    python write_datasets.py --cfg.split=train --cfg.data_dir=data/synthetic/train \
        --cfg.write_path=data/betons/train.beton --preset fast-256
    python write_datasets.py --cfg.split=val --cfg.data_dir=data/synthetic/val \
        --cfg.write_path=data/betons/val.beton --preset fast-256 \
        --cfg.classes=data/betons/train.beton.classes.json

``python -m ffcv_imagenet convert`` is the same command. A flat val folder
(ILSVRC2012_val_*.JPEG) takes --cfg.labels=LOC_val_solution.csv; Tiny ImageNet's val
folder is recognised by its val_annotations.txt.

The samples are stored in an order shuffled with ``--shuffle SEED`` (short for
``--cfg.shuffle``, default 0), each image with its label, and the seed recorded in
<write_path>.storage.json; ``--keep-order`` stores them as listed, one class after
the other.

``--preset NAME`` (short for ``--cfg.preset=NAME``) sets the four storage keys
(max_resolution, write_mode, compress_probability, jpeg_quality) to a named preset of
``ffcv_imagenet.data.write.storage``; a storage key given beside it that would store
something else is an error, naming both.

A file that cannot be read, or that takes more than --cfg.max_seconds_per_image or
--cfg.max_memory_mb_per_image to read, is skipped and listed with its reason in
<write_path>.skipped.txt (--cfg.strict=1 stops instead).
"""
from __future__ import annotations

import sys
from pathlib import Path

from fastargs import Param, Section
from fastargs.validation import And, InRange

from ..data.folders import (ANNOTATIONS_FILE, SYNSET_FILE, WORDS_FILE, list_annotated,
                            list_flat, list_tree, load_classes,
                            read_synset_names, stratified_subset)
from ..data.write.storage import PRESETS, STORAGE_KEYS, find_preset
from ..data.write.writer import WRITE_MODES, write_beton
from .config import ConfigError, Flag, OneOf, parse_config
from .runner import exit_code

Section('cfg', 'dataset conversion').params(
    split=Param(OneOf('train', 'val'), 'which split: train makes the class list, '
                'val reads it from --cfg.classes', default='train'),
    data_dir=Param(str, 'folder of the split: one folder per class, or flat images '
                   'with --cfg.labels', required=True),
    write_path=Param(str, 'output .beton path', required=True),
    labels=Param(str, 'label file of a flat folder: LOC_val_solution.csv, or Tiny '
                 "ImageNet's val_annotations.txt (found by itself in data_dir)", default=''),
    classes=Param(str, 'class list of the train split (<train.beton>.classes.json); '
                  'required for val', default=''),
    synset_mapping=Param(str, 'wnid -> name file; default: LOC_synset_mapping.txt '
                         'in or beside data_dir', default=''),
    preset=Param(str, "storage preset, setting max_resolution, write_mode, "
                 "compress_probability and jpeg_quality: " + '; '.join(
                     f"{p.name} ({p.storage.describe()}): {p.use}" for p in PRESETS.values())
                 + " ('': none; --preset NAME for short)", default=''),
    max_resolution=Param(And(int, InRange(min=0)), 'longest side in pixels after resizing '
                         '(0 keeps the size)', default=256),
    write_mode=Param(OneOf(*WRITE_MODES), 'how pixels are stored', default='jpg'),
    compress_probability=Param(And(float, InRange(0, 1)), 'JPEG share in proportion mode',
                               default=0.5),
    jpeg_quality=Param(And(int, InRange(1, 100)), 'JPEG quality', default=90),
    smart_threshold=Param(And(int, InRange(min=0)), 'smart mode: JPEG above this many '
                          'raw bytes', default=0),
    num_workers=Param(And(int, InRange(min=1)), 'processes', default=2),
    chunk_size=Param(And(int, InRange(min=1)), 'images per work item', default=100),
    subset=Param(And(int, InRange(min=0)), 'keep this many images, stratified by class '
                 '(0: all)', default=0),
    seed=Param(int, 'seed of the subset choice', default=0),
    shuffle=Param(And(int, InRange(min=0)), 'seed of the order the samples are stored in '
                  '(--shuffle SEED for short); a class tree lists one class after the '
                  'other, shuffled every part of the file holds a random sample of the '
                  'classes', default=0),
    keep_order=Param(Flag(), 'store the samples in the order listed (by class) instead '
                     'of shuffled (--keep-order for short)', default=0),
    strict=Param(Flag(), 'stop at the first unreadable image instead of skipping it',
                 default=0),
    max_seconds_per_image=Param(And(float, InRange(min=0)), 'a file that takes longer to '
                                'read is skipped, its worker replaced (0: no limit)',
                                default=60.0),
    max_memory_mb_per_image=Param(And(int, InRange(min=0)), 'MiB of memory a worker may '
                                  'add while reading one file; above it the file is '
                                  'skipped (0: no limit)', default=4096),
)


def _synset_file(cfg_value: str, data_dir: Path) -> Path | None:
    if cfg_value:
        return Path(cfg_value)
    for candidate in (data_dir / name for data_dir in (data_dir, data_dir.parent)
                      for name in (SYNSET_FILE, WORDS_FILE)):
        if candidate.is_file():
            return candidate
    return None


def _listing(data_dir: Path, labels: str, classes: list[str] | None):
    """(samples, classes) of a class tree, a flat folder with a CSV label file, or
    Tiny ImageNet's val folder (its val_annotations.txt is found by itself)."""
    if not labels and (data_dir / ANNOTATIONS_FILE).is_file():
        labels = str(data_dir / ANNOTATIONS_FILE)
    if not labels:
        return list_tree(data_dir, classes)
    if classes is None:
        raise ConfigError("--cfg.labels (a flat folder) needs --cfg.classes")
    if Path(labels).name == ANNOTATIONS_FILE or labels.endswith('.txt'):
        return list_annotated(data_dir, labels, classes), classes
    return list_flat(data_dir, labels, classes), classes


def expand_preset_flag(argv: list[str]) -> list[str]:
    """The short flags: ``--preset NAME`` / ``--preset=NAME`` -> ``--cfg.preset=NAME``,
    ``--shuffle SEED`` likewise -> ``--cfg.shuffle=SEED``, ``--keep-order`` ->
    ``--cfg.keep_order=1``."""
    out, index = [], 0
    while index < len(argv):
        arg = argv[index]
        for short in ('preset', 'shuffle'):
            if arg == f'--{short}' and index + 1 < len(argv):
                index += 1
                arg = f"--cfg.{short}={argv[index]}"
            elif arg.startswith(f'--{short}='):
                arg = f'--cfg.{short}=' + arg.removeprefix(f'--{short}=')
        if arg == '--keep-order':
            arg = '--cfg.keep_order=1'
        out.append(arg)
        index += 1
    return out


def storage_settings(config) -> tuple[dict[str, object], str | None]:
    """(the write settings of STORAGE_KEYS by name, the preset's name or None). A preset
    sets them; a key also given explicitly (command line or file) must agree with it.
    Raises:
        ConfigError: an unknown preset, or an explicit key that contradicts it.
    """
    settings = {key: config[f'cfg.{key}'] for key in STORAGE_KEYS}
    name = config['cfg.preset']
    if not name:
        return settings, None
    try:
        preset = find_preset(name)
    except ValueError as err:
        raise ConfigError(f"cfg.preset: {err}") from None
    given = {key: value for key, value in settings.items() if ('cfg', key) in config.content}
    for key, value, fixed in preset.conflicts(given):
        raise ConfigError(f"--cfg.{key}={value} contradicts --cfg.preset={name}, which "
                          f"sets {key}={fixed}; give one or the other")
    return {**settings, **preset.settings()}, name


def main(argv=None) -> int:
    argv = expand_preset_flag(sys.argv[1:] if argv is None else list(argv))
    config = parse_config(__doc__.splitlines()[0], argv, ('cfg',))
    cfg = lambda key: config[f'cfg.{key}']  # noqa: E731
    storage, preset = storage_settings(config)
    if cfg('keep_order') and ('cfg', 'shuffle') in config.content:
        raise ConfigError(f"--cfg.shuffle={cfg('shuffle')} contradicts --cfg.keep_order=1; "
                          f"give one or the other")
    data_dir = Path(cfg('data_dir'))
    if cfg('split') == 'val' and not cfg('classes'):
        raise ConfigError("the val split needs --cfg.classes=<train.beton>.classes.json "
                          "so that its labels match the train split")
    names = None
    if cfg('classes'):
        classes, names = load_classes(cfg('classes'))
    else:
        classes = None
    samples, classes = _listing(data_dir, cfg('labels'), classes)
    if names is None:
        names = read_synset_names(_synset_file(cfg('synset_mapping'), data_dir), classes)
    keep = stratified_subset([label for _, label in samples], cfg('subset'), cfg('seed'))
    samples = [samples[i] for i in keep]
    report = write_beton(
        samples, cfg('write_path'), classes, names,
        **storage, preset=preset, smart_threshold=cfg('smart_threshold') or None,
        num_workers=cfg('num_workers'),
        chunk_size=cfg('chunk_size'), strict=bool(cfg('strict')),
        max_seconds_per_image=cfg('max_seconds_per_image'),
        max_memory_mb_per_image=cfg('max_memory_mb_per_image'),
        shuffle_seed=None if cfg('keep_order') else cfg('shuffle'))
    print(report.summary())
    return 0


def run(argv: list[str] | None = None) -> int:
    """:func:`main` with a bad config or dataset turned into one line, exit code 2."""
    return exit_code(lambda: main(argv),
                     interrupted="error: interrupted; nothing was written to the output path")


if __name__ == '__main__':
    sys.exit(run())
