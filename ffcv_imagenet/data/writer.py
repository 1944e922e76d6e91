"""Writing a list of (image path, label) pairs to an FFCV ``.beton`` file.

Beside ``out.beton`` it writes ``out.beton.classes.json`` (the class list) and, when
some files could not be read, ``out.beton.skipped.txt`` (one ``path<TAB>reason``
line each). Everything is written to a temporary file in the same folder and
renamed into place at the end, so a run that fails or is interrupted leaves
whatever was at the final paths before untouched.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .folders import DatasetError, classes_path
from .images import ImageError, check_image, load_rgb

WRITE_MODES = ('raw', 'jpg', 'proportion', 'smart')


@dataclass
class WriteReport:
    """What a conversion did: counts, seconds, bytes, and the skipped files with reasons."""
    path: Path
    written: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    bytes: int = 0

    def summary(self) -> str:
        skipped = f"{len(self.skipped)} skipped"
        if self.skipped:
            skipped += f" (see {skipped_path(self.path)})"
        return (f"wrote {self.written} images, {skipped}, in {self.seconds:.1f} s, "
                f"{self.bytes / 2**20:.1f} MiB -> {self.path}")


def skipped_path(beton_path: str | os.PathLike) -> Path:
    """Where the report of unreadable files of a ``.beton`` goes."""
    return Path(str(beton_path) + '.skipped.txt')


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class _ImageDataset:
    """Indexable (pixels, label) source for ffcv's DatasetWriter workers.

    ffcv's writer waits forever if a worker raises, so a file that fails here
    (it passed the check, so this is rare) is recorded in ``failure_log`` and
    replaced by a 1-pixel placeholder; the caller then discards the output.
    """

    def __init__(self, samples: list[tuple[str, int]], failure_log: str):
        self.samples = samples
        self.failure_log = failure_log

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path, label = self.samples[index]
        try:
            return load_rgb(path), label
        except Exception as err:  # noqa: BLE001 - any failure must not hang the writer
            with open(self.failure_log, 'a') as log:
                log.write(f"{path}\t{type(err).__name__}: {err}\n")
            return np.zeros((1, 1, 3), np.uint8), label


def find_bad_files(paths: list[str], num_workers: int) -> list[tuple[str, str]]:
    """(path, reason) for every file in ``paths`` that cannot be read as an image."""
    with Pool(max(1, num_workers)) as pool:
        reasons = list(tqdm(pool.imap(check_image, paths, chunksize=64), total=len(paths),
                            desc='checking', unit='img'))
    return [(p, r) for p, r in zip(paths, reasons) if r is not None]


def _fields(write_mode: str, max_resolution: int, jpeg_quality: int,
            compress_probability: float, smart_threshold: int | None) -> dict:
    from ffcv.fields import IntField, RGBImageField
    if write_mode not in WRITE_MODES:
        raise DatasetError(f"cfg.write_mode must be one of {WRITE_MODES}, got {write_mode!r}")
    image = RGBImageField(write_mode=write_mode, max_resolution=max_resolution or None,
                          smart_threshold=smart_threshold, jpeg_quality=jpeg_quality,
                          compress_probability=compress_probability)
    return {'image': image, 'label': IntField()}


def _claim_temp_file(out: Path) -> Path:
    """A fresh temporary file beside ``out``; a clear error if the folder is unwritable."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix='.tmp', dir=out.parent)
    except OSError as err:
        raise DatasetError(f"cannot write to {out}: {err.strerror or err}") from None
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)  # mkstemp's 0600 would hide the output from other users
    return Path(name)


def _check_written(path: Path, count: int, out: Path) -> None:
    """Raises DatasetError unless ``path`` holds ``count`` samples, each with its data
    allocated. ffcv's writer swallows any exception (Ctrl-C included) while it writes
    its allocation table and then leaves a file without one; this keeps such a file
    from replacing ``out``."""
    from ffcv.reader import Reader
    try:
        reader = Reader(str(path))
        stored = len(np.unique(reader.alloc_table['sample_id']))
    except Exception as err:  # noqa: BLE001 - any unreadable result is the same failure
        raise DatasetError(f"writing {out} failed: the result does not read back "
                           f"({type(err).__name__}: {err})") from None
    if reader.num_samples != count or stored != count:
        raise DatasetError(f"writing {out} failed: {stored} of {count} images were stored "
                           f"(interrupted?); nothing was written to {out}")


def write_beton(samples: list[tuple[str, int]], out_path: str | os.PathLike,
                classes: list[str], class_names: list[str] | None = None, *,
                max_resolution: int = 256, write_mode: str = 'jpg',
                jpeg_quality: int = 90, compress_probability: float = 0.5,
                smart_threshold: int | None = None, num_workers: int = 2,
                chunk_size: int = 100, strict: bool = False) -> WriteReport:
    """Converts ``samples`` to ``out_path`` (fields ``image``: RGB, ``label``: int).

    Args:
        samples: (image path, class index) pairs, in the order they are stored.
        classes, class_names: the class list (wnids) and display names, saved beside.
        max_resolution: longest side in pixels after resizing (0: keep the size).
        write_mode: 'jpg', 'raw' (uint8 pixels), 'proportion' (JPEG with probability
            ``compress_probability``) or 'smart' (JPEG above ``smart_threshold`` bytes).
        strict: stop with an error naming the first unreadable file, writing nothing.
    Returns:
        A :class:`WriteReport`.
    """
    from ffcv.writer import DatasetWriter
    out = Path(out_path)
    fields = _fields(write_mode, max_resolution, jpeg_quality, compress_probability,
                     smart_threshold)
    start = time.perf_counter()
    tmp = _claim_temp_file(out)
    failure_log = Path(str(tmp) + '.failures')
    try:
        bad = find_bad_files([p for p, _ in samples], num_workers)
        if bad and strict:
            raise DatasetError(f"unreadable image {bad[0][0]}: {bad[0][1]}")
        bad_paths = {p for p, _ in bad}
        good = [s for s in samples if s[0] not in bad_paths]
        if not good:
            raise DatasetError(f"no readable images to write to {out}")
        writer = DatasetWriter(str(tmp), fields, num_workers=max(1, num_workers))
        writer.from_indexed_dataset(_ImageDataset(good, str(failure_log)), chunksize=chunk_size)
        _check_written(tmp, len(good), out)
        if failure_log.exists():
            path, reason = failure_log.read_text().splitlines()[0].split('\t', 1)
            raise DatasetError(f"unreadable image {path}: {reason}")
        names = class_names or classes
        _atomic_write_text(classes_path(out), json.dumps({'classes': classes, 'names': names},
                                                         indent=1))
        report_file = skipped_path(out)
        if bad:
            _atomic_write_text(report_file, ''.join(f"{p}\t{r}\n" for p, r in bad))
        elif report_file.exists():
            report_file.unlink()  # a report from an earlier run would now be wrong
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        failure_log.unlink(missing_ok=True)
    return WriteReport(out, len(good), bad, time.perf_counter() - start, out.stat().st_size)


