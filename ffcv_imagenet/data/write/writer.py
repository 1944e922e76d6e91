"""Writing a list of (image path, label) pairs to an FFCV ``.beton`` file.

Beside ``out.beton`` it writes ``out.beton.classes.json`` (the class list),
``out.beton.storage.json`` (how the images are stored, see :mod:`.storage`) and, when
some files could not be read, ``out.beton.skipped.txt`` (one ``path<TAB>reason``
line each). Everything is written to a temporary file in the same folder and
renamed into place at the end, so a run that fails or is interrupted leaves
whatever was at the final paths before untouched.

Files are only ever decoded in :mod:`.sandbox` processes, in the check and in the
write, so no file can stop a conversion: whatever it does (raise, hang, exhaust
memory, crash, print from C code) makes it a skipped file with a reason.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..ffcv_import import import_ffcv
from ..folders import DatasetError, classes_path
from .images import ImageError, check_image, load_rgb
from ..messages import one_line
from .sandbox import Limits, Outcome, Sandbox, run_each
from .storage import Storage, find_preset, record_json, storage_path

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


def _reason(outcome: Outcome) -> str | None:
    """Why a file failed (None: it did not), with the first line its decoder printed."""
    reason = outcome.error
    if reason is None and isinstance(outcome.value, str):
        reason = outcome.value
    if reason and outcome.stderr:
        reason = f"{reason} [stderr: {outcome.stderr}]"
    return one_line(reason) if reason else None


def _pixels_or_reason(path: str) -> np.ndarray | str:
    """What a writer worker's sandbox runs: the pixels, or why there are none."""
    try:
        return load_rgb(path)
    except ImageError as err:
        return str(err)


class _ImageDataset:
    """Indexable (pixels, label) source for ffcv's DatasetWriter workers.

    Each writer worker decodes through its own :class:`Sandbox`, so a file cannot hang,
    crash or flood the terminal here either. To keep that cheap, a request for image
    ``i`` decodes up to ``prefetch`` images from ``i`` on, up to the end of ``i``'s
    chunk (ffcv hands each worker whole chunks of consecutive indices), in one trip.

    ffcv's writer waits forever if a worker raises, so a file that fails here (it
    passed the check, so this is rare) is recorded in ``failure_log``
    (``index<TAB>reason`` lines) and stored as a 1-pixel placeholder; the caller then
    writes again without it.
    """

    def __init__(self, samples: list[tuple[str, int]], failure_log: str, limits: Limits,
                 chunk_size: int, prefetch: int = 16):
        self.samples = samples
        self.failure_log = failure_log
        self.chunk_size = chunk_size
        self.prefetch = prefetch
        self.sandbox = Sandbox(_pixels_or_reason, limits)
        self._ready: dict[int, Outcome] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _decode_from(self, index: int) -> None:
        chunk_end = (index // self.chunk_size + 1) * self.chunk_size
        indices = range(index, min(len(self.samples), chunk_end, index + self.prefetch))
        # the views of the previous batch end here; ffcv is done with them
        self._ready = dict(zip(indices, self.sandbox.map([self.samples[i][0]
                                                          for i in indices])))

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        if index not in self._ready:
            self._decode_from(index)
        outcome = self._ready.pop(index)
        path, label = self.samples[index]
        reason = _reason(outcome)
        if reason is None:
            return outcome.value, label
        with open(self.failure_log, 'a') as log:  # one short O_APPEND write per line
            log.write(f"{index}\t{reason}\n")
        return np.zeros((1, 1, 3), np.uint8), label


def find_bad_files(paths: list[str], num_workers: int,
                   limits: Limits = Limits()) -> list[tuple[str, str]]:
    """(path, reason) for every file in ``paths`` that cannot be read as an image within
    ``limits`` (seconds and MiB per file), in the order of ``paths``. Whatever a file
    does to its worker process, it is only a reason here."""
    reasons = {}
    with closing(run_each(check_image, paths, limits, num_workers)) as results:
        for index, outcome in tqdm(results, total=len(paths), desc='checking', unit='img'):
            reason = _reason(outcome)
            if reason:
                reasons[index] = reason
    return [(paths[i], reasons[i]) for i in sorted(reasons)]


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


def _write_once(samples: list[tuple[str, int]], tmp: Path, out: Path, fields: dict,
                num_workers: int, chunk_size: int, limits: Limits) -> list[tuple[str, str]]:
    """Writes ``samples`` to ``tmp``; returns (path, reason) of those that failed to
    decode there, in order. Those were stored as placeholders: if any, ``tmp`` must be
    written again without them."""
    from ffcv.writer import DatasetWriter
    failure_log = Path(str(tmp) + '.failures')
    failure_log.unlink(missing_ok=True)
    try:
        writer = DatasetWriter(str(tmp), fields, num_workers=max(1, num_workers))
        dataset = _ImageDataset(samples, str(failure_log), limits, chunk_size)
        writer.from_indexed_dataset(dataset, chunksize=chunk_size)
        _check_written(tmp, len(samples), out)
        lines = failure_log.read_text().splitlines() if failure_log.exists() else []
    finally:
        failure_log.unlink(missing_ok=True)
    failed = dict(line.split('\t', 1) for line in lines)
    return [(samples[int(i)][0], failed[i]) for i in sorted(failed, key=int)]


def _write_readable(samples: list[tuple[str, int]], skipped: list[tuple[str, str]],
                    tmp: Path, out: Path, fields: dict, num_workers: int, chunk_size: int,
                    limits: Limits, strict: bool) -> list[tuple[str, int]]:
    """Writes the samples not in ``skipped`` to ``tmp``, and again without any that fail
    while being written (those are added to ``skipped``); returns the samples stored."""
    while True:
        if skipped and strict:
            path, reason = skipped[0]
            raise DatasetError(f"unreadable image {path}: {reason}")
        dropped = {path for path, _ in skipped}
        good = [sample for sample in samples if sample[0] not in dropped]
        if not good:
            raise DatasetError(f"no readable images to write to {out}")
        failed = _write_once(good, tmp, out, fields, num_workers, chunk_size, limits)
        if not failed:
            return good
        skipped.extend(failed)  # rare: each pass drops at least one file, so this ends


def write_beton(samples: list[tuple[str, int]], out_path: str | os.PathLike,
                classes: list[str], class_names: list[str] | None = None, *,
                max_resolution: int = 256, write_mode: str = 'jpg',
                jpeg_quality: int = 90, compress_probability: float = 0.5,
                smart_threshold: int | None = None, num_workers: int = 2,
                chunk_size: int = 100, strict: bool = False,
                max_seconds_per_image: float = 60.0,
                max_memory_mb_per_image: int = 4096,
                preset: str | None = None, shuffle_seed: int | None = None) -> WriteReport:
    """Converts ``samples`` to ``out_path`` (fields ``image``: RGB, ``label``: int).

    Every file is read in a worker process that it cannot take down: one that raises,
    runs past ``max_seconds_per_image`` seconds, needs more than
    ``max_memory_mb_per_image`` MiB (address space beyond the worker's start) or kills
    its worker is skipped and listed, with the reason, in ``<out_path>.skipped.txt``.
    What the image libraries print to stderr never reaches the terminal: the first
    line of it is added to the reason of a file that failed.

    Args:
        samples: (image path, class index) pairs, in the order they are stored.
        classes, class_names: the class list (wnids) and display names, saved beside.
        max_resolution: longest side in pixels after resizing (0: keep the size).
        write_mode: 'jpg', 'raw' (uint8 pixels), 'proportion' (JPEG with probability
            ``compress_probability``) or 'smart' (JPEG above ``smart_threshold`` bytes).
        strict: stop with an error naming the first unreadable file, writing nothing.
        max_seconds_per_image, max_memory_mb_per_image: the per-file limits (0: none).
        preset: the name of the :mod:`.storage` preset these settings are, recorded in
            ``<out_path>.storage.json`` beside the settings (None: none).
        shuffle_seed: store the samples in an order shuffled with this seed, each
            image with its label (None: in the order given), recorded in the same file.
            A class tree lists one class after the other: shuffled, every part of the
            file holds a random sample of the classes, which an order that reads the
            file a part at a time needs (``data.order=blocks``).
    Returns:
        A :class:`WriteReport`; its ``skipped`` lists the files not stored.
    """
    out = Path(out_path)
    import_ffcv()  # (ffcv is imported where it is used, so importing this module stays cheap)
    fields = _fields(write_mode, max_resolution, jpeg_quality, compress_probability,
                     smart_threshold)
    storage = Storage.of(max_resolution, write_mode, compress_probability, jpeg_quality,
                         smart_threshold)
    if preset is not None and find_preset(preset).storage != storage:
        raise ValueError(f"preset {preset} writes {find_preset(preset).storage.describe()}, "
                         f"not {storage.describe()}")
    limits = Limits(max_seconds_per_image, max_memory_mb_per_image)
    if shuffle_seed is not None:
        samples = [samples[i] for i in np.random.default_rng(shuffle_seed).permutation(
            len(samples))]
    start = time.perf_counter()
    tmp = _claim_temp_file(out)
    try:
        skipped = find_bad_files([p for p, _ in samples], num_workers, limits)
        good = _write_readable(samples, skipped, tmp, out, fields, num_workers, chunk_size,
                               limits, strict)
        names = class_names or classes
        _atomic_write_text(classes_path(out), json.dumps({'classes': classes, 'names': names},
                                                         indent=1))
        _atomic_write_text(storage_path(out), record_json(storage, preset, tmp.stat().st_size,
                                                          shuffle_seed))
        report_file = skipped_path(out)
        if skipped:
            _atomic_write_text(report_file, ''.join(f"{p}\t{r}\n" for p, r in skipped))
        elif report_file.exists():
            report_file.unlink()  # a report from an earlier run would now be wrong
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return WriteReport(out, len(good), skipped, time.perf_counter() - start,
                       out.stat().st_size)
