"""The front door: ``python -m ffcv_imagenet <command> [arguments]`` (or the
``ffcv-imagenet`` console script). Every command works from an installed wheel alone,
without a clone; ``<command> --help`` lists its arguments."""
from __future__ import annotations

import importlib
import sys

# command -> (module, function taking argv, what it does); in the order of the data flow
COMMANDS = {
    'synthetic': ('ffcv_imagenet.data.synthetic', 'main',
                  'write the generated ImageNet-like folder tree'),
    'convert': ('ffcv_imagenet.cli.convert', 'run',
                'image folder -> .beton (what write_datasets.py runs)'),
    'preview': ('ffcv_imagenet.tools.preview', 'main',
                'PNG grid of one augmented training batch'),
    'bench': ('ffcv_imagenet.tools.bench.command', 'main',
              'images/sec: loaders vs torchvision, training steps'),
    'lr-finder': ('ffcv_imagenet.tools.lr_finder', 'run',
                  'learning-rate range test on a recipe'),
    'train': ('ffcv_imagenet.cli.train', 'run',
              'train or evaluate a recipe (what train_imagenet.py runs)'),
    'export': ('ffcv_imagenet.cli.export', 'run',
               'checkpoint -> torchvision state_dict, torch.export .pt2 or ONNX, checked'),
    'predict': ('ffcv_imagenet.cli.predict', 'run',
                'top-k classes of image files with a checkpoint or an export'),
    'evaluate': ('ffcv_imagenet.cli.evaluate', 'run',
                 'top-1/top-5 of a checkpoint or an export on a val .beton or folder'),
    'plots': ('ffcv_imagenet.tools.plots', 'main', 'PNG plots of a run folder'),
    'sweep': ('ffcv_imagenet.tools.sweep', 'run',
              'ablation sweep: train a grid of variants, summary table and plot'),
    'gpu-check': ('ffcv_imagenet.tools.gpu_check', 'main',
                  'does this GPU node work, and how fast (--device cpu: toy size)'),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, (_, _, what) in COMMANDS.items()]
    return ("usage: python -m ffcv_imagenet <command> [arguments]\n\ncommands:\n"
            + "\n".join(lines) + "\n\n'<command> --help' lists the arguments of one.")


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns its exit code (2 for an unknown command)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(usage())
        return 0 if argv else 2
    name = argv[0].replace('_', '-')
    if name not in COMMANDS:
        print(f"error: unknown command '{argv[0]}'\n\n{usage()}", file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[name]
    sys.argv[0] = f"python -m ffcv_imagenet {name}"  # argparse's usage line names it
    code = getattr(importlib.import_module(module), function)(argv[1:])
    return 0 if code is None else code


if __name__ == '__main__':
    sys.exit(main())
