"""Does this GPU node work, and how fast? One command, one process tree, a few minutes.

    python -m ffcv_imagenet gpu-check --out gpu_check        # on a CUDA machine
    python -m ffcv_imagenet gpu-check --device cpu --out x   # every stage at toy size

Stages, in order (each one's result is printed as it ends):

1. environment: GPU, driver, torch, CUDA, cuDNN, NCCL, ffcv, numba, numpy, Python;
2. cuda tests: ``pytest -m cuda`` on the project's tests, when a clone's ``tests/`` is
   beside the package (or ``--tests DIR``); an installed wheel has none;
3. crops: the loader on the device (uint8 decode, normalised in torch) gives the same
   pixels as the CPU loader (normalised in the decoder) for the same seed;
4. training: a ResNet on generated data, bf16 in one process and fp16 with the gradient
   scaler under ``torchrun --nproc_per_node=1`` (NCCL on a GPU; on the CPU, the toy
   check, bf16 under torchrun alone); each run stops half-way and resumes from its
   checkpoint; the training loss must fall;
5. speed: images/sec for the loader alone, the model alone and end to end,
   channels-last, bf16 on a GPU, at the recipes' batch (and one row at 256): on the
   published storage (500 px, half the images raw) eager, then ``torch.compile``d, at
   160 and 192 px (compile time left out), then on 256 px JPEG storage, eager;
6. loader-threads: the train loader alone at 1, 2, 4, 8 and 14 decoding threads on
   each storage, and with reduced-scale decoding on the published one.

Writes ``gpu_check.json`` and ``gpu_check.md`` (the table, the machine named) into
``--out``. Exit codes: 0 every check passed, 1 a check failed, 3 no CUDA device (and
``--device cpu`` not given), 2 bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch

from ..data.read.decoders import IMAGENET_STD
from ..data.read.loaders import endless_batches, train_loader
from ..training.logs import read_log
from .bench.steps import default_workers
from .gpu_speed import free_loaders, loader_scaling, make_storages, measure_speed

NO_CUDA = 3
# the stages after the environment, in the order they run
STAGES = ('cuda-tests', 'crops', 'training', 'speed', 'loader-threads')
IMAGENET_TRAIN_IMAGES = 1_281_167


@dataclass(frozen=True)
class Profile:
    """Sizes of one check (a small one for the CPU, a real one for a GPU)."""
    # generated data: classes, train and val images per class
    classes: int
    train_per_class: int
    val_per_class: int
    # the storage presets the data is converted with; the first is the one the
    # published results used, where speed is measured first and compiled
    storages: tuple[str, ...]
    # the training check: arch, resolution in pixels, batch per step, epochs
    train_arch: str
    train_resolution: int
    train_batch: int
    train_epochs: int
    # the speed table: arch, resolutions in pixels, those also timed compiled
    speed_arch: str
    resolutions: tuple[int, ...]
    compile_resolutions: tuple[int, ...]
    # the speed table: batch per step (the recipes'), an extra row's batch (0: none),
    # timed steps, untimed warm-up steps before them
    speed_batch: int
    extra_batch: int
    steps: int
    warmup: int
    # the loader's scaling: decoding thread counts
    thread_counts: tuple[int, ...]
    # torch.compile's backend of the compiled rows ('eager': dynamo's tracing alone)
    compile_backend: str = 'inductor'


GPU = Profile(classes=10, train_per_class=1000, val_per_class=50,
              storages=('rn50-published', 'fast-256'),
              train_arch='resnet50', train_resolution=160, train_batch=128, train_epochs=4,
              speed_arch='resnet50', resolutions=(160, 192), compile_resolutions=(160, 192),
              speed_batch=512, extra_batch=256, steps=60, warmup=15,
              thread_counts=(1, 2, 4, 8, 14))
TOY = Profile(classes=4, train_per_class=24, val_per_class=4,
              storages=('rn50-published', 'fast-256'),
              train_arch='resnet18', train_resolution=32, train_batch=8, train_epochs=4,
              speed_arch='resnet18', resolutions=(32,), compile_resolutions=(32,),
              speed_batch=8, extra_batch=0, steps=3, warmup=2, thread_counts=(2,),
              compile_backend='eager')  # the compiled path checked, not code generation


@dataclass
class Report:
    """What the check found: one entry per stage, in order."""
    stages: list[dict] = field(default_factory=list)

    def add(self, name: str, ok: bool | None, **details) -> dict:
        """Records a stage (``ok`` None: skipped) and prints its one-line summary."""
        stage = {'stage': name, 'ok': ok, **details}
        self.stages.append(stage)
        verdict = {True: 'ok', False: 'FAILED', None: 'skipped'}[ok]
        print(f"[{verdict:>7}] {name}: {details.get('summary', '')}", flush=True)
        return stage

    @property
    def passed(self) -> bool:
        return all(stage['ok'] is not False for stage in self.stages)


def environment(device: torch.device) -> dict:
    """The software and hardware the figures belong to."""
    facts = {'python': platform.python_version(), 'torch': torch.__version__,
             'host_cpu': platform.processor() or platform.machine(),
             'cpu_cores': os.cpu_count()}
    for name in ('ffcv', 'numba', 'numpy', 'torchvision'):
        try:  # the installed distribution's version: ffcv's __version__ is stale
            facts[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            facts[name] = None
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(device)
        facts.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                     gpu_count=torch.cuda.device_count(), cuda=torch.version.cuda,
                     cudnn=torch.backends.cudnn.version(), driver=_driver_version(),
                     nccl='.'.join(map(str, torch.cuda.nccl.version())))
    return facts


def _driver_version() -> str | None:
    try:
        done = subprocess.run(['nvidia-smi', '--query-gpu=driver_version',
                               '--format=csv,noheader'], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout else None


def run_cuda_tests(tests: Path | None) -> dict:
    """``pytest -m cuda`` on ``tests``; (ok, summary line). No folder: skipped."""
    if tests is None or not tests.is_dir():
        return {'ok': None, 'summary': 'no tests folder (an installed wheel has none; '
                                       'pass --tests DIR from a clone)'}
    done = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-m', 'cuda', '-p',
                           'no:cacheprovider', str(tests)], capture_output=True, text=True,
                          cwd=tests.parent, timeout=1800)
    lines = done.stdout.strip().splitlines()
    # 5: every test deselected or skipped, which is no failure
    return {'ok': done.returncode in (0, 5), 'summary': lines[-1] if lines else done.stderr,
            'output_tail': '\n'.join(lines[-30:])}


def check_crops(beton: Path, device: torch.device, workers: int, resolution: int,
                batch: int) -> dict:
    """Largest pixel difference (0-255 levels) between the device loader (uint8 decode,
    normalised in torch) and the CPU loader (normalised in the decoder), same seed."""
    batches = []
    for where, decoded in ((device, torch.uint8), (torch.device('cpu'), torch.float32)):
        loader = train_loader(beton, batch_size=batch, resolution=resolution,
                              num_workers=workers, device=where, seed=7,
                              decoder_dtype=decoded)
        with endless_batches(loader) as stream:  # ends the epoch's thread afterwards
            images, labels = next(stream)
            # copied before leaving: a batch is a view of ffcv's buffers, which the
            # decoding thread may still write into while it stops
            batches.append((images.float().cpu().clone(), labels.cpu().clone()))
        del loader
        free_loaders()
    (a, a_labels), (b, b_labels) = batches
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    worst = ((a - b) * std).abs().max().item()
    same_labels = torch.equal(a_labels, b_labels)
    return {'ok': same_labels and worst < 0.01, 'max_pixel_difference': worst,
            'same_labels': same_labels,
            'summary': f"{a.shape[0]} crops at {resolution} px, labels "
                       f"{'equal' if same_labels else 'DIFFER'}, largest pixel difference "
                       f"{worst:.4f} levels (limit 0.01)"}


def _train_args(betons: tuple[Path, Path], folder: Path, profile: Profile,
                device: torch.device, precision: str, workers: int) -> list[str]:
    train, val = betons
    res = profile.train_resolution
    return [f'--data.train_dataset={train}', f'--data.val_dataset={val}',
            f'--data.num_workers={workers}', f'--model.arch={profile.train_arch}',
            '--model.zero_init_residual=1', f'--resolution.min_res={res}',
            f'--resolution.max_res={res}', f'--validation.resolution={res}',
            f'--training.batch_size={profile.train_batch}',
            f'--validation.batch_size={profile.train_batch}',
            f'--training.epochs={profile.train_epochs}', f'--training.precision={precision}',
            f'--training.device={device.type}', '--lr.lr=0.5', '--lr.peak_epoch=1',
            '--logging.progress=0', '--logging.log_every=10', f'--logging.folder={folder}']


def check_training(betons: tuple[Path, Path], out: Path, profile: Profile,
                   device: torch.device, precision: str, torchrun: bool,
                   workers: int) -> dict:
    """Trains half the epochs, stops, resumes to the end (two invocations of the train
    command, under torchrun when asked); checks both succeed, the resume continues
    where the first stopped, and the train loss of the last epoch is below the first's."""
    launch = [sys.executable, '-m', 'ffcv_imagenet', 'train']
    if torchrun:
        launch = [sys.executable, '-m', 'torch.distributed.run', '--standalone',
                  '--nproc_per_node=1', '-m', 'ffcv_imagenet', 'train']
    folder = out / 'runs' / f"{precision}{'_torchrun' if torchrun else ''}"
    args = _train_args(betons, folder, profile, device, precision, workers)
    half = profile.train_epochs // 2
    start = time.perf_counter()
    for extra in ([f'--training.stop_after={half}'], ['--checkpoint.resume=auto']):
        done = subprocess.run([*launch, *args, *extra], capture_output=True, text=True,
                              timeout=1800)
        if done.returncode != 0:
            return {'ok': False, 'summary': f"train command exited {done.returncode}: "
                                            f"{done.stderr.strip().splitlines()[-1:]}",
                    'stderr_tail': done.stderr[-3000:]}
    epochs, resumed = read_log(folder, 'epoch'), read_log(folder, 'resume')
    losses = [r['train_loss'] for r in epochs]
    ok = (len(epochs) == profile.train_epochs and len(resumed) == 1
          and resumed[0]['epoch'] == half and losses[-1] < losses[0]
          and (folder / 'checkpoints' / 'final.pt').is_file())
    return {'ok': ok, 'train_loss': losses, 'val_top1': epochs[-1].get('val_top1'),
            'seconds': time.perf_counter() - start, 'run_folder': str(folder),
            'summary': f"{len(epochs)} epochs, resumed at epoch {half}, train loss "
                       f"{losses[0]:.3f} -> {losses[-1]:.3f}, val top-1 "
                       f"{epochs[-1].get('val_top1')}"}


def format_markdown(report: Report, env: dict) -> str:
    """The report as markdown: the machine, each stage's verdict, the speed table and
    the projection per 8-GPU node."""
    machine = env.get('gpu') or f"CPU ({env['host_cpu']}, {env['cpu_cores']} cores)"
    lines = [f"# gpu-check on {machine}", '',
             ', '.join(f"{k} {v}" for k, v in env.items() if v is not None), '',
             '| stage | result | summary |', '|---|---|---|']
    for stage in report.stages:
        verdict = {True: 'ok', False: 'FAILED', None: 'skipped'}[stage['ok']]
        lines.append(f"| {stage['stage']} | {verdict} | {stage.get('summary', '')} |")
    speed = next((s for s in report.stages if s['stage'] == 'speed'), None)
    if speed and speed.get('rows'):
        lines += ['', '| storage | px | compiled | precision | batch | loader alone | '
                      'model alone | end to end | end to end / model |',
                  '|---|---|---|---|---|---|---|---|---|']
        for row in speed['rows']:
            lines.append(f"| {row['storage']} | {row['resolution']} | "
                         f"{'yes' if row['compiled'] else 'no'} | {row['precision']} | "
                         f"{row['batch_size']} | {row['loader_alone']:.0f} | "
                         f"{row['model_alone']:.0f} | {row['end_to_end']:.0f} | "
                         f"{row['end_to_end_vs_model']:.1%} |")
        best = max(speed['rows'], key=lambda row: row['end_to_end'])
        epoch = IMAGENET_TRAIN_IMAGES / (8 * best['end_to_end'])
        lines += ['', f"Images/sec per device, {best['arch']}, {best['workers']} decoding "
                      f"threads. At the best end-to-end rate ({best['end_to_end']:.0f} "
                      f"images/sec at {best['resolution']} px, {best['storage']}), one "
                      f"ImageNet-1k epoch on 8 such devices takes {epoch:.0f} s (perfect "
                      f"scaling assumed)."]
    threads = next((s for s in report.stages if s['stage'] == 'loader-threads'), None)
    if threads and threads.get('rows'):
        lines += ['', '| storage | decoding | threads | loader images/sec | per thread |',
                  '|---|---|---|---|---|']
        for row in threads['rows']:
            lines.append(f"| {row['storage']} | "
                         f"{'reduced-scale' if row['dct_scaling'] else 'full-size'} | "
                         f"{row['threads']} | {row['images_per_sec']:.0f} | "
                         f"{row['per_thread']:.0f} |")
    return '\n'.join(lines) + '\n'


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default='gpu_check', help='output folder (data, runs, report)')
    parser.add_argument('--device', choices=('cuda', 'cpu'), default='cuda',
                        help='cpu: every stage at toy size (CI keeps the command working)')
    parser.add_argument('--tests', default=None,
                        help="tests folder for 'pytest -m cuda' (default: the clone's)")
    parser.add_argument('--workers', type=int, default=None,
                        help='decoding threads (default: cores less two)')
    parser.add_argument('--skip', nargs='*', default=[],
                        choices=STAGES,
                        help='stages to leave out')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        print("gpu-check: no CUDA device here (torch.cuda.is_available() is False); "
              "'--device cpu' runs every stage at toy size", file=sys.stderr)
        return NO_CUDA
    device = torch.device('cuda', 0) if args.device == 'cuda' else torch.device('cpu')
    profile = GPU if device.type == 'cuda' else TOY
    workers = args.workers or default_workers()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report, env = Report(), environment(device)
    report.add('environment', True, summary=env.get('gpu') or 'CPU', **env)
    run_stages(report, args, device, profile, workers, out)
    result = {'environment': env, 'profile': profile.__dict__, 'stages': report.stages,
              'passed': report.passed}
    (out / 'gpu_check.json').write_text(json.dumps(result, indent=1, default=str) + '\n')
    (out / 'gpu_check.md').write_text(format_markdown(report, env))
    print(f"gpu-check {'passed' if report.passed else 'FAILED'}; report in "
          f"{out / 'gpu_check.md'} and {out / 'gpu_check.json'}")
    return 0 if report.passed else 1


def run_stages(report: Report, args, device: torch.device, profile: Profile, workers: int,
               out: Path) -> None:
    """Stages 2-5 into ``report``; an exception in one is recorded as its failure."""
    tests = Path(args.tests) if args.tests else Path(__file__).resolve().parents[2] / 'tests'
    stages = {
        'cuda-tests': lambda: run_cuda_tests(tests),
        'crops': lambda: check_crops(published[0], device, workers, profile.train_resolution,
                                     profile.train_batch),
        'training': lambda: _training_stage(published, out, profile, device, workers),
        'speed': lambda: _speed_stage(betons, device, profile, workers),
        'loader-threads': lambda: _threads_stage(betons, device, profile),
    }
    betons = make_storages(out / 'data', profile, workers)
    published = betons[profile.storages[0]]
    for name, stage in stages.items():
        if name in args.skip:
            report.add(name, None, summary='left out (--skip)')
            continue
        try:
            result = stage()
        except Exception as err:  # a broken stage must not hide the others' results
            result = {'ok': False, 'summary': f"{type(err).__name__}: {err}"}
        report.add(name, result.pop('ok'), **result)


def _training_stage(betons, out: Path, profile: Profile, device: torch.device,
                    workers: int) -> dict:
    # fp16 autocast exists on GPUs only: on the CPU the second run would be the first
    # again under torchrun, so the toy check makes only that one
    runs = ([('bf16', False), ('fp16', True)] if device.type == 'cuda'
            else [('bf16', True)])
    results = [check_training(betons, out, profile, device, precision, torchrun, workers)
               for precision, torchrun in runs]
    names = [f"{p}{' under torchrun' if t else ''}" for p, t in runs]
    return {'ok': all(r['ok'] for r in results), 'runs': dict(zip(names, results)),
            'summary': '; '.join(f"{n}: {r['summary']}" for n, r in zip(names, results))}


def _speed_stage(betons, device: torch.device, profile: Profile, workers: int) -> dict:
    rows = measure_speed(betons, device, profile, workers)
    return {'ok': True, 'rows': rows,
            'summary': ', '.join(f"{row['storage']} {row['resolution']} px "
                                 f"{'compiled' if row['compiled'] else 'eager'} "
                                 f"{row['end_to_end']:.0f} images/sec end to end "
                                 f"({row['end_to_end_vs_model']:.0%} of model)"
                                 for row in rows
                                 if row['batch_size'] == profile.speed_batch
                                 and row['storage'] == profile.storages[0])}


def _threads_stage(betons, device: torch.device, profile: Profile) -> dict:
    rows = loader_scaling(betons, device, profile)
    most = [row for row in rows if row['threads'] == max(profile.thread_counts)
            and not row['dct_scaling']]
    return {'ok': True, 'rows': rows,
            'summary': ', '.join(f"{row['storage']} {row['images_per_sec']:.0f} images/sec "
                                 f"on {row['threads']} threads" for row in most)}


if __name__ == '__main__':
    sys.exit(main())
