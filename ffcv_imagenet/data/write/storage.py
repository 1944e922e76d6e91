"""How a ``.beton`` stores its images: the named presets, the record written beside
each file, and the comparison of the two.

A preset is a set of conversion settings under a name: the storage the published
ffcv-imagenet results were trained on (``rn50-published``, ``rn18-published``), or the
small, fast one (``fast-256``). The converter writes one by name (``--preset``); a
training recipe names the one it was published with (``data.storage_preset``), and the
trainer compares that with the record of its ``.beton`` files.

The record, ``<beton>.storage.json``, holds the settings, the preset's name (null when
none was given) and the size of the ``.beton`` it describes. A ``.beton`` written before
records existed has none; one replaced since its record was written (another size)
counts as having none.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple

from ..folders import DatasetError

# the settings a preset fixes, by their names in write_beton and the converter's config
STORAGE_KEYS = ('max_resolution', 'write_mode', 'compress_probability', 'jpeg_quality')
RECORD_VERSION = 1


@dataclass(frozen=True)
class Storage:
    """The settings that decide what a ``.beton`` stores, normalised (:meth:`of`) so that
    two conversions storing the same compare equal: a setting its mode ignores is None."""
    # longest side in pixels after resizing; 0: every image kept at its size
    max_resolution: int
    # ffcv's RGBImageField mode: 'jpg', 'raw', 'proportion' or 'smart'
    write_mode: str
    # 'proportion' only: the share of images stored as JPEG, the rest as raw pixels
    compress_probability: float | None = None
    # quality (1-100) of the images stored as JPEG; None in 'raw' mode, which has none
    jpeg_quality: int | None = None
    # 'smart' only: images of more raw bytes than this are stored as JPEG (None: none)
    smart_threshold: int | None = None

    @classmethod
    def of(cls, max_resolution: int, write_mode: str, compress_probability: float | None,
           jpeg_quality: int | None, smart_threshold: int | None = None) -> Storage:
        """The storage that these write settings (as ``write_beton`` takes them) give;
        the settings ``write_mode`` ignores are dropped."""
        return cls(int(max_resolution), write_mode,
                   round(float(compress_probability), 6)
                   if write_mode == 'proportion' and compress_probability is not None
                   else None,
                   int(jpeg_quality) if write_mode != 'raw' and jpeg_quality is not None
                   else None,
                   int(smart_threshold) if write_mode == 'smart' and smart_threshold
                   else None)

    def describe(self) -> str:
        """E.g. '500 px, proportion 0.5, quality 90' or '256 px, jpg, quality 90'."""
        size = f"{self.max_resolution} px" if self.max_resolution else "full size"
        mode = self.write_mode
        if mode == 'proportion':
            mode = f"proportion {self.compress_probability:g}"
        elif mode == 'smart':
            mode = (f"smart above {self.smart_threshold} bytes" if self.smart_threshold
                    else "smart without a threshold")
        quality = f", quality {self.jpeg_quality}" if self.jpeg_quality is not None else ""
        return f"{size}, {mode}{quality}"


@dataclass(frozen=True)
class StoragePreset:
    """A named set of conversion settings; :data:`PRESETS` holds them all."""
    # what --preset takes, and what a recipe's data.storage_preset names
    name: str
    # longest side in pixels after resizing
    max_resolution: int
    # 'jpg': every image a JPEG; 'proportion': a JPEG with compress_probability, else raw
    write_mode: str
    # the JPEG share in 'proportion' mode; None where the mode ignores it
    compress_probability: float | None
    # quality of the JPEGs, 1-100
    jpeg_quality: int
    # what it is for, in a few words (the converter's --help)
    use: str

    @property
    def storage(self) -> Storage:
        """What a ``.beton`` written with this preset stores."""
        return Storage.of(self.max_resolution, self.write_mode, self.compress_probability,
                          self.jpeg_quality)

    def settings(self) -> dict[str, object]:
        """The write settings it fixes, by name (those its mode ignores left out)."""
        values = {key: getattr(self, key) for key in STORAGE_KEYS}
        return {key: value for key, value in values.items() if value is not None}

    def conflicts(self, given: dict[str, object]) -> list[tuple[str, object, object]]:
        """(name, given value, this preset's value) for each of the write settings in
        ``given`` (by name) that would store something else than this preset does. A
        setting equal to the preset's, or one its mode ignores, is no conflict."""
        found = []
        for key, value in given.items():
            if key not in STORAGE_KEYS:
                continue
            changed = {**{k: getattr(self, k) for k in STORAGE_KEYS}, key: value}
            if Storage.of(**changed) != self.storage:
                found.append((key, value, getattr(self, key)))
        return found


PRESETS = {preset.name: preset for preset in (
    StoragePreset('rn50-published', 500, 'proportion', 0.5, 90,
                  "what the published ResNet-50 results were trained on"),
    StoragePreset('rn18-published', 400, 'proportion', 0.1, 90,
                  "what the published ResNet-18 results were trained on"),
    StoragePreset('fast-256', 256, 'jpg', None, 90,
                  "small files, fast to load, not the published results' data"),
)}


def find_preset(name: str) -> StoragePreset:
    """The preset called ``name``.
    Raises:
        ValueError: no such preset; the message lists the known ones.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown storage preset {name!r} (known: {', '.join(PRESETS)})")
    return PRESETS[name]


class StorageRecord(NamedTuple):
    """What ``<beton>.storage.json`` says: the storage, the preset's name or None, and
    the order of the samples in the file."""
    storage: Storage
    preset: str | None
    # 'shuffled' (by ``shuffle_seed``), 'given' (as listed: a class tree's folder order,
    # one class after the other) or None (recorded before the order was)
    sample_order: str | None = None
    shuffle_seed: int | None = None


def storage_path(beton_path: str | os.PathLike) -> Path:
    """Where the storage record of a ``.beton`` lives: ``<beton>.storage.json``."""
    return Path(str(beton_path) + '.storage.json')


def record_json(storage: Storage, preset: str | None, beton_bytes: int,
                shuffle_seed: int | None = None) -> str:
    """The text of a storage record for a ``.beton`` of ``beton_bytes`` bytes whose
    samples were shuffled with ``shuffle_seed`` (None: stored in the order given)."""
    order = {'sample_order': 'given' if shuffle_seed is None else 'shuffled',
             'shuffle_seed': shuffle_seed}
    return json.dumps({'version': RECORD_VERSION, **asdict(storage), 'preset': preset,
                       'beton_bytes': beton_bytes, **order}, indent=1)


def read_storage(beton_path: str | os.PathLike) -> StorageRecord | None:
    """The storage record of a ``.beton``; None when it has none (written before
    records existed, copied without it) or the record describes a file of another size
    (the ``.beton`` was replaced since).
    Raises:
        DatasetError: the record exists but cannot be read, naming it.
    """
    path = storage_path(beton_path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding='utf-8'))
        storage = Storage.of(*(data[field.name] for field in fields(Storage)))
        preset, size = data['preset'], int(data['beton_bytes'])
        order, seed = data.get('sample_order'), data.get('shuffle_seed')
        seed = None if seed is None else int(seed)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as err:
        raise DatasetError(f"storage record {path} is unreadable ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}); delete it "
                           f"to treat the .beton as unrecorded") from None
    if not os.path.isfile(beton_path) or os.path.getsize(beton_path) != size:
        return None
    return StorageRecord(storage, preset, order, seed)


def storage_note(preset: StoragePreset, records: dict[str, StorageRecord | None],
                 who: str) -> str | None:
    """One line for the user when a ``.beton`` does not hold what ``preset`` writes, or
    when it has no record; None when every one matches. ``records``: ``.beton`` path ->
    its record (None: none); ``who``: what expects the preset, named in the line."""
    written: dict[str, list[str]] = {}
    unknown = []
    for path, record in records.items():
        if record is None:
            unknown.append(path)
        elif record.storage != preset.storage:
            written.setdefault(record.storage.describe(), []).append(path)
    if not written and not unknown:
        return None
    parts = [f"{' and '.join(paths)} {'was' if len(paths) == 1 else 'were'} written with "
             f"{described}" for described, paths in written.items()]
    if unknown:
        one = len(unknown) == 1
        parts.append(f"{' and '.join(unknown)} {'has' if one else 'have'} no storage "
                     f"record, so {'its' if one else 'their'} storage is unknown")
    return (f"note: {who} expects storage {preset.name} ({preset.storage.describe()}); "
            + '; '.join(parts))


def storage_notes(preset_name: str, betons: list[str], who: str) -> list[str]:
    """:func:`storage_note` for the ``.beton`` files at ``betons``, read from disk: []
    or one line. Raises DatasetError: an unreadable record; ValueError: an unknown
    preset."""
    line = storage_note(find_preset(preset_name),
                        {path: read_storage(path) for path in betons}, who)
    return [line] if line else []
