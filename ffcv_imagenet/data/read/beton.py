"""Checking that a file is a whole, usable ``.beton`` before ffcv opens it.

ffcv trusts its input: a copy cut short or a file of another format ends deep inside
its reader or loader (``negative dimensions are not allowed``, ``IndexError``).
:func:`check_beton` reads what ffcv's reader reads at start-up (header, field
descriptors, per-sample metadata, allocation table), never the image data, and
raises :class:`~ffcv_imagenet.data.folders.DatasetError` with one line naming the
file.

The layout (ffcv format version 2), in bytes from the start of the file::

    header (24) | field descriptors (1041 each) | metadata (one record per sample)
    | pages of sample data ... | allocation table (24 per allocation) to the end

The writer appends the allocation table last, so a truncated copy loses (part of)
it: the table must start after the metadata, end exactly at the end of the file,
hold an allocation for every sample, and every allocation must lie between the
metadata and the table.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ffcv.fields import IntField, RGBImageField
from ffcv.types import (ALLOC_TABLE_TYPE, CURRENT_VERSION, TYPE_ID_HANDLER, FieldDescType,
                        HeaderType)

from ..folders import DatasetError, classes_path, load_classes

# The fields the loaders decode, and the ffcv field class each must be written with.
REQUIRED_FIELDS = {'image': RGBImageField, 'label': IntField}


@dataclass(frozen=True)
class BetonInfo:
    """What :func:`check_beton` found: ``num_samples`` images, the ``fields`` (name ->
    ffcv field class name), the label range, and the file size in bytes."""
    path: Path
    num_samples: int
    fields: dict[str, str]
    min_label: int
    max_label: int
    size: int


def _read(handle, offset: int, nbytes: int) -> bytes:
    handle.seek(offset)
    return handle.read(nbytes)


def _header(path: Path, handle, size: int) -> np.void:
    raw = _read(handle, 0, HeaderType.itemsize)
    if size == 0:
        raise DatasetError(f"{path} is empty (0 bytes), not a .beton file")
    if len(raw) < HeaderType.itemsize:
        raise DatasetError(f"{path} is not a .beton file: {size} bytes, shorter than an "
                           f"FFCV header")
    header = np.frombuffer(raw, dtype=HeaderType)[0]
    if header['version'] != CURRENT_VERSION or header['num_fields'] == 0:
        raise DatasetError(f"{path} is not a .beton file (no FFCV format-{CURRENT_VERSION} "
                           f"header)")
    page_size = int(header['page_size'])
    if page_size == 0 or page_size & (page_size - 1):
        raise DatasetError(f"{path} is not a .beton file (page size {page_size} is not a "
                           f"power of 2)")
    return header


def _fields(path: Path, handle, num_fields: int, size: int) -> tuple[list[str], list]:
    """(names, ffcv field objects) from the descriptors that follow the header."""
    nbytes = num_fields * FieldDescType.itemsize
    raw = _read(handle, HeaderType.itemsize, nbytes)
    if len(raw) < nbytes:
        raise DatasetError(f"{path} is cut short: {size} bytes, too few for the "
                           f"{num_fields} field descriptors its header announces")
    names, fields = [], []
    for desc in np.frombuffer(raw, dtype=FieldDescType):
        name = bytes(desc['name']).split(b'\0')[0].decode('utf-8', errors='replace')
        handler = TYPE_ID_HANDLER.get(int(desc['type_id']))
        try:
            field = handler.from_binary(desc['arguments'])
            np.dtype(field.metadata_type)
        except Exception:  # noqa: BLE001 - None (a custom field) or garbage arguments
            raise DatasetError(f"{path}: field {name!r} has a type this program cannot "
                               f"read (type id {int(desc['type_id'])})") from None
        names.append(name)
        fields.append(field)
    return names, fields


def _check_required_fields(path: Path, names: list[str], fields: list) -> None:
    found = {name: type(field) for name, field in zip(names, fields)}
    for name, kind in REQUIRED_FIELDS.items():
        if found.get(name) is not kind:
            have = ', '.join(f"{n!r} ({k.__name__})" for n, k in found.items())
            raise DatasetError(f"{path} has no {name!r} field of type {kind.__name__} "
                               f"(its fields: {have}); write it with "
                               f"write_datasets.py")


def _check_allocations(path: Path, handle, header: np.void, data_start: int, size: int
                       ) -> None:
    """Checks that the allocation table is whole, locates every sample, and places
    all data between the metadata and the table. The table is the file's tail, so a
    cut copy fails here even when its image data is intact: comparing the file size
    with the largest ptr + size alone would miss a cut inside the table."""
    table_start, num_samples = int(header['alloc_table_ptr']), int(header['num_samples'])
    if not data_start <= table_start <= size:
        raise DatasetError(f"{path} is cut short (an interrupted copy?): {size} bytes, but "
                           f"its allocation table starts at byte {table_start}")
    if (size - table_start) % ALLOC_TABLE_TYPE.itemsize:
        raise DatasetError(f"{path} is cut short or damaged: its allocation table "
                           f"({size - table_start} bytes) is not a whole number of entries")
    table = np.frombuffer(_read(handle, table_start, size - table_start),
                          dtype=ALLOC_TABLE_TYPE)
    ends = table['ptr'] + table['size']
    if len(table) and (table['ptr'].min() < data_start or ends.max() > table_start):
        raise DatasetError(f"{path} is damaged: sample data at bytes {table['ptr'].min()}-"
                           f"{ends.max()}, outside its data region {data_start}-{table_start}")
    ids = table['sample_id']
    seen = np.zeros(num_samples, dtype=bool)
    seen[ids[ids < num_samples]] = True
    if not seen.all() or (ids >= num_samples).any():
        raise DatasetError(f"{path} is cut short or damaged (an interrupted copy?): its "
                           f"allocation table locates {int(seen.sum())} of its {num_samples} "
                           f"images")


def check_beton(path: str | os.PathLike, num_classes: int | None = None) -> BetonInfo:
    """Checks that ``path`` is a whole FFCV ``.beton`` with an RGB ``image`` and an int
    ``label`` field and at least one sample, reading only its header, field
    descriptors, metadata (num_samples x ~24 bytes) and allocation table (24 bytes per
    image), never the images.

    Args:
        num_classes: when given, every label must lie in ``[0, num_classes)``.
    Raises:
        DatasetError: one line naming the file and what is wrong with it.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f".beton file not found: {path}")
    try:
        with open(path, 'rb') as handle:
            size = os.fstat(handle.fileno()).st_size
            info = _check_open(path, handle, size)
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err.strerror or err}") from None
    if num_classes is not None:
        _check_labels(info, num_classes, f"num_classes={num_classes}")
    return info


def _check_labels(info: BetonInfo, num_classes: int, source: str) -> None:
    if info.min_label < 0 or info.max_label >= num_classes:
        raise DatasetError(f"{info.path} stores labels {info.min_label}..{info.max_label}, "
                           f"but {source} has {num_classes} classes (0..{num_classes - 1})")


def _layout(num_fields: int, num_samples: int, fields: list) -> tuple[np.dtype, int, int]:
    """(metadata record dtype, byte offset of the metadata, of the data after it)."""
    # ffcv's reader lays the records out with C alignment, fields in file order
    record = np.dtype([(f'f{i}', field.metadata_type) for i, field in enumerate(fields)],
                      align=True)
    meta_start = HeaderType.itemsize + num_fields * FieldDescType.itemsize
    return record, meta_start, meta_start + num_samples * record.itemsize


def _check_open(path: Path, handle, size: int) -> BetonInfo:
    header = _header(path, handle, size)
    num_fields, num_samples = int(header['num_fields']), int(header['num_samples'])
    names, fields = _fields(path, handle, num_fields, size)
    _check_required_fields(path, names, fields)
    if num_samples == 0:
        raise DatasetError(f"{path} holds no images")
    record, meta_start, data_start = _layout(num_fields, num_samples, fields)
    if data_start > size:
        raise DatasetError(f"{path} is cut short (an interrupted copy?): {size} bytes, too "
                           f"few for the metadata of the {num_samples} images it announces")
    _check_allocations(path, handle, header, data_start, size)
    metadata = np.frombuffer(_read(handle, meta_start, data_start - meta_start), dtype=record)
    labels = metadata[f'f{names.index("label")}']
    return BetonInfo(path, num_samples, {n: type(f).__name__ for n, f in zip(names, fields)},
                     int(labels.min()), int(labels.max()), size)


def check_dataset(path: str | os.PathLike, num_classes: int | None = None) -> BetonInfo:
    """:func:`check_beton`, with the labels checked against ``num_classes`` or, when
    that is None, against the class list ``<path>.classes.json`` if there is one (a
    ``.beton`` written by another tool may have none).
    Raises:
        DatasetError: one line naming the ``.beton`` or its class list.
    """
    if num_classes is not None or not classes_path(path).is_file():
        return check_beton(path, num_classes)
    info = check_beton(path)
    classes, _ = load_classes(classes_path(path))
    _check_labels(info, len(classes), f"its class list {classes_path(path)}")
    return info


def _field_records(info: BetonInfo, handle) -> tuple[np.void, dict[str, np.ndarray]]:
    """The header of a checked ``.beton`` and each field's metadata, (num_samples,)
    records in file order, by field name."""
    header = _header(info.path, handle, info.size)
    num_fields = int(header['num_fields'])
    names, fields = _fields(info.path, handle, num_fields, info.size)
    record, meta_start, data_start = _layout(num_fields, info.num_samples, fields)
    metadata = np.frombuffer(_read(handle, meta_start, data_start - meta_start), dtype=record)
    return header, {name: metadata[f'f{i}'] for i, name in enumerate(names)}


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Each sample's label, in file order: (num_samples,) int64.
    Raises:
        DatasetError: as :func:`check_beton`.
    """
    info = check_beton(path)
    with open(info.path, 'rb') as handle:
        _, records = _field_records(info, handle)
    return records['label'].astype(np.int64)


IMAGE_TABLE = np.dtype([('mode', '<u1'), ('height', '<u2'), ('width', '<u2'),
                        ('data_ptr', '<u8'), ('size', '<u8')])


def read_image_table(path: str | os.PathLike) -> np.ndarray:
    """Where each stored image lies in a ``.beton`` (checked first, see
    :func:`check_beton`): one :data:`IMAGE_TABLE` record per sample, in file order,
    with ffcv's ``mode`` (0: JPEG, 1: raw pixels), ``height`` and ``width`` (pixels)
    and ``data_ptr`` (byte offset in the file), and ``size``: the bytes ffcv's reader
    hands the decoder, the allocation that starts at ``data_ptr``.
    Raises:
        DatasetError: as :func:`check_beton`.
    """
    info = check_beton(path)
    with open(info.path, 'rb') as handle:
        header, records = _field_records(info, handle)
        metadata = records['image']
        table_start = int(header['alloc_table_ptr'])
        allocations = np.frombuffer(_read(handle, table_start, info.size - table_start),
                                    dtype=ALLOC_TABLE_TYPE)
    # as ffcv's memory managers do: the allocation starting at an address gives its size
    by_address = np.argsort(allocations['ptr'])
    ptrs, sizes = allocations['ptr'][by_address], allocations['size'][by_address]
    images = np.zeros(info.num_samples, dtype=IMAGE_TABLE)
    for name in ('mode', 'height', 'width', 'data_ptr'):
        images[name] = metadata[name]
    images['size'] = sizes[np.searchsorted(ptrs, metadata['data_ptr'])]
    return images
