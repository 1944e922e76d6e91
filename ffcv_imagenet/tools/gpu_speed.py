"""gpu-check's speed measurements: the data in each storage, then images/sec of the
loader alone, the model alone and end to end, and the loader's scaling with threads.

Every rate is printed as soon as it is measured, so that a check stopped by a time
limit still shows what it finished.
"""
from __future__ import annotations

import gc
import statistics
from pathlib import Path

import torch

from ..data.folders import list_tree
from ..data.read.loaders import train_loader
from ..data.synthetic import generate
from ..data.write.storage import find_preset
from ..data.write.writer import write_beton
from .bench.loader import epoch_rates
from .bench.steps import bench_train


def make_storages(out: Path, profile, workers: int) -> dict[str, tuple[Path, Path]]:
    """The generated folder tree (written once) converted with each storage preset of
    ``profile.storages``: preset -> (train.beton, val.beton), reused when present."""
    betons = {}
    root = None
    for name in profile.storages:
        train, val = (out / name / 'train.beton', out / name / 'val.beton')
        betons[name] = train, val
        if train.is_file() and val.is_file():
            continue
        if root is None:
            root = generate(out / 'synthetic', classes=profile.classes,
                            train_per_class=profile.train_per_class,
                            val_per_class=profile.val_per_class, seed=0, workers=workers)
        train_samples, classes = list_tree(root / 'train')
        val_samples, _ = list_tree(root / 'val', classes)
        settings = find_preset(name).storage
        for samples, path in ((train_samples, train), (val_samples, val)):
            write_beton(samples, path, classes, max_resolution=settings.max_resolution,
                        write_mode=settings.write_mode,
                        compress_probability=settings.compress_probability or 0.5,
                        jpeg_quality=settings.jpeg_quality or 90, num_workers=workers,
                        preset=name)
    return betons


def loader_alone(beton: Path, device: torch.device, resolution: int, batch: int,
                 workers: int, dtype: torch.dtype, epochs: int = 3,
                 dct_scaling: bool = False) -> float:
    """Images/sec of the train loader alone, batches delivered on ``device`` in
    ``dtype`` (what training asks for); median over the epochs after the first."""
    loader = train_loader(beton, batch_size=batch, resolution=resolution,
                          num_workers=workers, device=device, dtype=dtype,
                          dct_scaling=dct_scaling)
    rates = epoch_rates(lambda: loader, epochs, device)
    del loader
    free_loaders()
    return statistics.median(rates[1:])


def free_loaders() -> None:
    """Frees the last loader's numba functions now: left to the cycle collector, that
    can happen while the next loader compiles, where numba's finalizer complains
    (KeyError)."""
    gc.collect()


def _precision(device: torch.device) -> tuple[str, torch.dtype]:
    return ('bf16', torch.bfloat16) if device.type == 'cuda' else ('off', torch.float32)


def speed_runs(profile) -> list[tuple[str, int, bool, int]]:
    """(storage, resolution in pixels, compiled, batch) of each speed row, in the order
    of their value: the first storage (the published one) eager, then compiled, at
    each resolution; one row at the extra batch; then the other storages, eager."""
    first, *others = profile.storages
    runs = [(first, res, compiled, profile.speed_batch)
            for compiled in (False, True) for res in profile.resolutions
            if not compiled or res in profile.compile_resolutions]
    if profile.extra_batch:
        runs.append((first, profile.resolutions[0], False, profile.extra_batch))
    runs += [(name, res, False, profile.speed_batch) for name in others
             for res in profile.resolutions]
    return runs


def measure_speed(betons: dict[str, tuple[Path, Path]], device: torch.device, profile,
                  workers: int) -> list[dict]:
    """One row per :func:`speed_runs` entry: loader alone, model alone, end to end
    (images/sec), with the end to end share of the model alone."""
    precision, dtype = _precision(device)
    rows = []
    for storage, res, compiled, batch in speed_runs(profile):
        beton = betons[storage][0]
        result = bench_train(str(beton), arch=profile.speed_arch, resolution=res,
                             batch_size=batch, precision=precision, channels_last=True,
                             blurpool=True, compile=compiled, workers=workers,
                             steps=profile.steps, warmup=profile.warmup, device=device.type,
                             compile_backend=profile.compile_backend)
        model, end_to_end = (row['images_per_sec'] for row in result['rows'])
        rows.append({'storage': storage, 'resolution': res, 'compiled': compiled,
                     'precision': precision, 'batch_size': batch, 'arch': profile.speed_arch,
                     'workers': workers,
                     'loader_alone': loader_alone(beton, device, res, batch, workers, dtype),
                     'model_alone': model, 'end_to_end': end_to_end,
                     'end_to_end_vs_model': end_to_end / model})
        print(f"          {storage} {res} px batch {batch} "
              f"{'compiled' if compiled else 'eager'}: loader {rows[-1]['loader_alone']:.0f}, "
              f"model {model:.0f}, end to end {end_to_end:.0f} images/sec "
              f"({end_to_end / model:.1%})", flush=True)
    return rows


def loader_scaling(betons: dict[str, tuple[Path, Path]], device: torch.device,
                   profile) -> list[dict]:
    """The train loader alone at each of ``profile.thread_counts`` decoding threads, on
    each storage, at the first resolution and the speed batch; on the first storage
    also with reduced-scale decoding (``dct_scaling``), the faster, blurrier choice."""
    _, dtype = _precision(device)
    res, batch = profile.resolutions[0], profile.speed_batch
    rows = []
    first = profile.storages[0]
    for storage in profile.storages:
        for dct in ((False, True) if storage == first else (False,)):
            for threads in profile.thread_counts:
                rate = loader_alone(betons[storage][0], device, res, batch, threads, dtype,
                                    epochs=2, dct_scaling=dct)
                rows.append({'storage': storage, 'threads': threads, 'dct_scaling': dct,
                             'resolution': res, 'batch_size': batch,
                             'images_per_sec': rate, 'per_thread': rate / threads})
                print(f"          {storage}{' dct_scaling' if dct else ''} {threads} "
                      f"threads: {rate:.0f} images/sec ({rate / threads:.0f} per thread)",
                      flush=True)
    return rows
