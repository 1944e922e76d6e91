"""Images/sec benchmarks, side by side in one run so that ratios are comparable.

    python -m ffcv_imagenet bench loader --beton data/betons/train.beton \
        --val-beton data/betons/val.beton --folder data/synthetic/train \
        --resolution 160 --batch-size 64 --workers 2 --epochs 5 --json bench.json

``loader`` times, on the same images, resolution, batch size and worker count:
(a) this project's train loader, (b) its val loader, (c) the decoding ceiling of
each: the same stored JPEGs, their bytes already in memory, decoded in full by
libjpeg-turbo (ffcv's ``imdecode``) at the reduced scale the loader's decoder picks for
the same crops, on as many threads, and thrown away (no ffcv ``Loader``, no Python
work per image), and beside it what the loaders' decoder decodes instead (only the
part of each JPEG around its crop), (d) a plain torchvision ``ImageFolder`` + ``RandomResizedCrop`` +
flip + ``ToTensor`` + ``Normalize`` pipeline through a ``DataLoader`` reading the
source folder. Each loader row also prints its share of its ceiling. The first pass
(an epoch; for val, as many epochs as make about a train epoch) of each is left out
(numba compilation; worker start-up and a cold file cache for torchvision); the figure is the median over the remaining ones (on a GPU,
queued work is waited for before each clock reading). ``--decoder-dtype`` picks the
ffcv loaders' output path: ``uint8`` (what a CUDA device takes: decode to uint8,
normalise in torch on the device; on a CPU device that normalisation is timed on the
CPU), ``float32`` (the CPU path: normalised in the decoder) or ``both`` (a train and
a val row for each, against the same ceilings); the default is the device's own.
``--peers`` adds ffcv's stock train pipeline and NVIDIA DALI's CPU pipeline (when it
is installed) on the train ``.beton``'s images, timed on the CPU. ``--reference REV``
adds the loaders of an older git revision of this package (one without the compiled
extension, such as 5aecb75), and gives each of today's loaders its ratio to them.
All but torchvision are timed interleaved, a pass of each per round, and shares and
ratios are the medians of the rounds' ratios: the machine's speed drifts during a run.
Details: :mod:`.loader`.

    python -m ffcv_imagenet bench train --beton data/betons/train.beton \
        --arch resnet50 --resolution 160 192 --batch-size 512 --precision auto \
        --steps 100 --warmup 20 --json bench_train.json

See :mod:`.steps` for what ``train`` times and leaves out.

    python -m ffcv_imagenet bench trainer -C rn50_32_epochs --out runs/bench_trainer \
        --set data.train_dataset=betons/train.beton --set data.val_dataset=betons/val.beton \
        --gpus 8 --json bench_trainer.json

``trainer`` runs the training command itself for a few epochs across its resolution
switch, prints where the time went and projects a whole recipe; see :mod:`.trainer`.

    python -m ffcv_imagenet bench order --beton big.beton --diversity

``order`` reads a file from disk in the train loader's two orders and counts the
classes per batch each gives; see :mod:`.order`.

    python -m ffcv_imagenet bench convert --images 3000 30000 \
        --preset rn50-published fast-256 --workers 2 --out /tmp/conv_data --json conv.json

``convert`` times the converter on generated trees of growing size and projects hours,
disk and memory to ImageNet's 1,281,167 train images; see :mod:`.convert`.

    python -m ffcv_imagenet bench memory --beton data/betons/train.beton \
        --processes 1 2 4 --in-memory 1 0 --batch-size 64 --json bench_memory.json

``memory`` runs the train loader under torchrun and prints each rank's RSS and PSS and
the page cache the file takes; see :mod:`.memory`.
"""
from __future__ import annotations

import argparse
import json
import os

from ...cli.config import ConfigError
from ...data.write.storage import PRESETS
from ...data.read.beton import DatasetError, check_dataset
from ...data.read.ffcv_loader import check_decoding_threads
from ...training.compiled import MODES as COMPILE_MODES
from ...training.models import ARCHS
from ...training.optim import PRECISIONS
from .convert import IMAGENET_TRAIN_IMAGES, bench_convert, format_convert_report
from .loader import BOTH, DECODER_DTYPES, bench_loaders, format_loader_table
from .memory import bench_memory, format_memory_table
from .steps import bench_train, default_workers, format_train_table
from .order import run as order_bench
from .trainer import bench_trainer, format_trainer_report, shortening


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    commands = parser.add_subparsers(dest='command', required=True)
    loader = commands.add_parser('loader', help='loader images/sec vs torchvision and vs decoding alone')
    loader.add_argument('--beton', required=True, help='train .beton')
    loader.add_argument('--val-beton', help='val .beton (optional)')
    loader.add_argument('--folder', required=True,
                        help='the image folder the train .beton was written from')
    loader.add_argument('--resolution', type=int, default=160, help='pixels')
    loader.add_argument('--batch-size', type=int, default=64)
    loader.add_argument('--workers', type=int, default=default_workers(),
                        help='decoding threads (default: the cores less two, at least one)')
    loader.add_argument('--epochs', type=int, default=5, help='including the untimed first')
    loader.add_argument('--device', default='cpu')
    loader.add_argument('--decoder-dtype', choices=DECODER_DTYPES + (BOTH,),
                        help="the ffcv loaders' output path: uint8 (normalised in torch "
                             "after the decoder), float32 (normalised in the decoder) or "
                             "both (rows for each); default: uint8 on a CUDA device, as "
                             "training takes, else float32")
    loader.add_argument('--peers', action='store_true',
                        help="also time ffcv's stock train pipeline and DALI's CPU "
                             "pipeline (when installed) on the train .beton's images")
    loader.add_argument('--reference', metavar='REV',
                        help='also time the loaders of this git revision of the package '
                             '(pure Python, before the compiled extension) beside '
                             "today's, e.g. 5aecb75")
    loader.add_argument('--json', help='also write the result here')
    train = commands.add_parser('train', help='training images/sec: model alone vs end to end')
    train.add_argument('--beton', required=True, help='train .beton')
    train.add_argument('--arch', choices=ARCHS, default='resnet50')
    train.add_argument('--resolution', type=int, nargs='+', default=[160],
                       help='pixels; several values give a pair of rows each')
    train.add_argument('--batch-size', type=int, default=512)
    train.add_argument('--precision', choices=PRECISIONS, default='auto')
    train.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=True)
    train.add_argument('--blurpool', action=argparse.BooleanOptionalAction, default=True)
    train.add_argument('--compile', action='store_true', help='torch.compile the model')
    train.add_argument('--compile-mode', choices=COMPILE_MODES, default='default',
                       help="with --compile: torch.compile's mode")
    train.add_argument('--compile-modes', nargs='+', choices=COMPILE_MODES, default=[],
                       metavar='MODE',
                       help='also time the model alone compiled in each of these modes '
                            f"({', '.join(COMPILE_MODES)}), with the first step's seconds")
    train.add_argument('--ddp-buckets', nargs='+', type=float, default=[], metavar='MIB',
                       help='also time the model alone under DDP in a process group of one '
                            '(NCCL on a GPU), with buckets of each size in MiB (torch: 25)')
    train.add_argument('--blurpool-forms', action='store_true',
                       help='also time the model alone with BlurPool off, in its reference '
                            'form and in the form training uses')
    train.add_argument('--workers', type=int, default=default_workers(),
                       help='decoding threads (default: the cores less two, at least '
                            'one: the main thread launches the kernels)')
    train.add_argument('--steps', type=int, default=100, help='timed steps per measurement')
    train.add_argument('--warmup', type=int, default=20, help='untimed steps before them')
    train.add_argument('--device', choices=('auto', 'cuda', 'cpu'), default='auto',
                       help="'auto': cuda if available")
    train.add_argument('--json', help='also write the results (a list, one per resolution)')
    _trainer_parser(commands)
    _order_parser(commands)
    _convert_parser(commands)
    _memory_parser(commands)
    return parser


def _order_parser(commands) -> None:
    order = commands.add_parser('order', help="the train loader's orders read from disk, "
                                "and the classes per batch each gives")
    order.add_argument('--beton', help='read this file in each order, from disk')
    order.add_argument('--make-beton', metavar='PATH',
                       help='first write a file of raw noise images here (--gigabytes)')
    order.add_argument('--gigabytes', type=float, default=4.0, help='size of --make-beton')
    order.add_argument('--batch-size', type=int, default=256)
    order.add_argument('--resolution', type=int, default=160, help='pixels')
    order.add_argument('--workers', type=int, default=default_workers(),
                       help='decoding threads (default: the cores less two, at least one)')
    order.add_argument('--window', type=int, default=16,
                       help="pages shuffled together in the 'blocks' order")
    order.add_argument('--seed', type=int, default=0)
    order.add_argument('--diversity', action='store_true',
                       help="classes per batch in each order, ImageNet's label layout "
                            'simulated')
    order.add_argument('--images-per-page', type=int, default=32,
                       help='--diversity: images per 8 MiB page (32: the published rn50 '
                            'storage)')
    order.add_argument('--diversity-batch', type=int, default=512,
                       help='--diversity: images per batch per GPU')
    order.add_argument('--world-size', type=int, default=8, help='--diversity: GPUs')
    order.add_argument('--json', help='also write the results here')


def _trainer_parser(commands) -> None:
    trainer = commands.add_parser('trainer', help='the training command timed: a breakdown '
                                  'of a short run and a projection of a whole recipe')
    trainer.add_argument('-C', '--config', action='append', default=[], metavar='FILE',
                         help='config file or shipped recipe name (repeatable)')
    trainer.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                         help="a setting of the run and of the projected recipe, e.g. "
                              "data.train_dataset=betons/train.beton (repeatable)")
    trainer.add_argument('--out', default='runs/bench_trainer',
                         help='run folder (new or empty)')
    trainer.add_argument('--epochs', type=int, default=3, help='epochs of the short run')
    trainer.add_argument('--start-ramp', type=int, default=1,
                         help="the short run's resolution.start_ramp")
    trainer.add_argument('--end-ramp', type=int, default=2,
                         help="the short run's resolution.end_ramp")
    trainer.add_argument('--project', metavar='RECIPE',
                         help='the recipe to project (default: the one run), not shortened')
    trainer.add_argument('--variant-set', action='append', default=[], metavar='KEY=VALUE',
                         help='also project the recipe with this setting added, and print '
                              'what it saves, e.g. validation.start_epoch=25 (repeatable)')
    trainer.add_argument('--gpus', type=int, default=8, help='GPUs of the projection')
    trainer.add_argument('--dataset-images', type=int, default=1_281_167,
                         help='train images per epoch of the projection (ImageNet-1k)')
    trainer.add_argument('--val-images', type=int, default=50_000,
                         help='images per validation pass of the projection')
    trainer.add_argument('--json', help='also write the result here')


def _trainer(parser, args) -> None:
    if min(args.epochs, args.gpus, args.dataset_images) < 1 or args.val_images < 0:
        parser.error("--epochs, --gpus and --dataset-images must be positive and "
                     "--val-images not negative")
    try:
        result = bench_trainer(args.config, args.set, args.out,
                               shorten=shortening(args.epochs, args.start_ramp, args.end_ramp),
                               project_configs=[args.project] if args.project else None,
                               gpus=args.gpus, dataset_images=args.dataset_images,
                               val_images=args.val_images, variant_sets=args.variant_set)
    except (ConfigError, RuntimeError) as err:
        parser.exit(2, f"bench trainer: {err}\n")
    print(format_trainer_report(result))
    _write_json(args.json, result)


def _convert_parser(commands) -> None:
    convert = commands.add_parser('convert', help='the converter timed at growing sizes: '
                                  'hours, disk and memory projected to ImageNet')
    convert.add_argument('--images', type=int, nargs='+', default=[3000, 30000],
                         help='generated train images per size, multiples of 10')
    convert.add_argument('--preset', nargs='+', choices=list(PRESETS),
                         default=['rn50-published', 'fast-256'], help='storage presets')
    convert.add_argument('--workers', type=int, default=2,
                         help="the converter's --cfg.num_workers (and the generator's)")
    convert.add_argument('--out', required=True, help='folder of the generated images '
                         '(kept, reused by a rerun) and the .beton files (deleted once '
                         'measured)')
    convert.add_argument('--keep-betons', action='store_true')
    convert.add_argument('--target-images', type=int, default=IMAGENET_TRAIN_IMAGES,
                         help='images of the projection (ImageNet-1k train)')
    convert.add_argument('--json', help='also write the result here')


def _convert(parser, args) -> None:
    if args.workers < 1 or args.target_images < 1:
        parser.error("--workers and --target-images must be positive")
    try:
        result = bench_convert(args.images, args.preset, args.workers, args.out,
                               args.target_images, args.keep_betons)
    except ValueError as err:
        parser.error(str(err))
    except RuntimeError as err:
        parser.exit(2, f"bench convert: {err}\n")
    print(format_convert_report(result))
    _write_json(args.json, result)


def _memory_parser(commands) -> None:
    memory = commands.add_parser('memory', help="each rank's RSS and PSS and the file's "
                                 'page cache, for 1, 2, 4 processes under torchrun')
    memory.add_argument('--beton', required=True, help='train .beton')
    memory.add_argument('--processes', type=int, nargs='+', default=[1, 2, 4],
                        help='process counts, one row each')
    memory.add_argument('--in-memory', type=int, nargs='+', choices=(0, 1), default=[1, 0],
                        help="data.in_memory values: 1 a memory map, 0 the samples read")
    memory.add_argument('--batch-size', type=int, default=64, help='images per rank')
    memory.add_argument('--resolution', type=int, default=160, help='pixels')
    memory.add_argument('--batches', type=int, default=0,
                        help='batches per rank (0: --epochs whole epochs)')
    memory.add_argument('--epochs', type=int, default=1)
    memory.add_argument('--workers', type=int, default=1, help='decoding threads per rank')
    memory.add_argument('--json', help='also write the result here')


def _memory(parser, args) -> None:
    if not os.path.exists(args.beton):
        parser.error(f"not found: {args.beton}")
    try:
        check_dataset(args.beton)
    except DatasetError as err:
        parser.exit(2, f"bench memory: {err}\n")
    if min(args.processes + [args.batch_size, args.resolution, args.epochs,
                             args.workers]) < 1 or args.batches < 0:
        parser.error("--processes, --batch-size, --resolution, --epochs and --workers "
                     "must be positive and --batches not negative")
    try:
        result = bench_memory(args.beton, processes=args.processes, in_memory=args.in_memory,
                              batch_size=args.batch_size, resolution=args.resolution,
                              batches=args.batches, epochs=args.epochs, workers=args.workers)
    except RuntimeError as err:
        parser.exit(2, f"bench memory: {err}\n")
    print(format_memory_table(result))
    _write_json(args.json, result)


def _write_json(path: str | None, result) -> None:
    if path:
        with open(path, 'w') as handle:
            json.dump(result, handle, indent=1)


def _check_threads(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses, in one line, more decoding threads than numba's pool holds (otherwise a
    traceback from inside ffcv's Loader, under torchrun one per rank); the converter's
    workers are processes."""
    try:
        check_decoding_threads(getattr(args, 'workers', 0) if args.command != 'convert' else 0)
    except ValueError as err:
        parser.error(f"--workers: {err}")


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    _check_threads(parser, args)
    if args.command == 'trainer':
        _trainer(parser, args)
        return
    if args.command == 'order':
        if not (args.beton or args.make_beton or args.diversity):
            parser.error("bench order: give --beton, --make-beton or --diversity")
        if args.beton and not args.make_beton and not os.path.exists(args.beton):
            parser.error(f"not found: {args.beton}")
        _write_json(args.json, order_bench(args))
        return
    if args.command == 'convert':
        _convert(parser, args)
        return
    if args.command == 'memory':
        _memory(parser, args)
        return
    paths = [args.beton]
    if args.command == 'loader':
        paths += [args.val_beton, args.folder]
    for path in paths:
        if path and not os.path.exists(path):
            parser.error(f"not found: {path}")
    if args.command == 'loader':
        result = bench_loaders(args.beton, args.folder, args.val_beton,
                               resolution=args.resolution, batch_size=args.batch_size,
                               workers=args.workers, epochs=args.epochs, device=args.device,
                               decoder_dtype=args.decoder_dtype, peers=args.peers,
                               reference=args.reference)
        print(format_loader_table(result))
        _write_json(args.json, result)
        return
    results = [bench_train(args.beton, arch=args.arch, resolution=res,
                           batch_size=args.batch_size, precision=args.precision,
                           channels_last=args.channels_last, blurpool=args.blurpool,
                           compile=args.compile, workers=args.workers, steps=args.steps,
                           warmup=args.warmup, device=args.device,
                           blurpool_forms=args.blurpool_forms,
                           compile_modes=args.compile_modes, compile_mode=args.compile_mode,
                           ddp_buckets=args.ddp_buckets)
               for res in args.resolution]
    print(format_train_table(results))
    _write_json(args.json, results)


if __name__ == '__main__':
    main()
