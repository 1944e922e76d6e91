"""Ablation sweeps: train every combination of a grid of config values, or a list of
named variants, each in its own run folder, then write a summary table and a plot.

    python -m ffcv_imagenet sweep -C rn18_cpu_demo.yaml --out runs/ablation \\
        --grid model.drop_path_rate=0,0.1 mix.cutmix_alpha=0,1 \\
        --set data.train_dataset=data/betons/train.beton \\
        --set data.val_dataset=data/betons/val.beton
    python -m ffcv_imagenet sweep --summarise-only runs/ablation

Each variant runs ``train -C <recipes> --set values, its own values,
--logging.folder=<out>/<variant> --checkpoint.resume=auto`` in a child process, with
its output in ``<out>/<variant>/train_output.log``; its name is its overrides
(``drop_path_rate=0.1__cutmix_alpha=1``), or the name a ``--variants`` YAML file
gives it (``name: {section.key: value, ...}``). Variants run one after another, or
side by side: one per GPU with ``--gpus`` (each child sees only its GPU), or
``--parallel N`` at once without assigning GPUs.

Running the same command again continues the sweep: finished variants (``final.pt``
written) are skipped, interrupted and failed ones start again and resume from their
last checkpoint. A variant that fails is recorded and the sweep goes on (exit code 1
at the end). SIGTERM or Ctrl-C, or a variant that exits 75 (preempted), stops the
sweep: running variants get SIGTERM, save and stop, and the sweep exits 75 (130 after
Ctrl-C). ``summary.md``, ``summary.csv`` and ``val_top1.png`` in ``--out`` are
rewritten after every variant, and by ``--summarise-only`` at any time.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..cli.config import ConfigError, find_config_file, flatten_keys, parse_config
from ..cli.recipe import check_dataset
from ..cli.runner import exit_code
from ..cli.train_config import SECTIONS, check_values
from ..training.checkpoint import checkpoint_dir
from ..training.preempt import PREEMPTED_EXIT
from .sweep_runner import Job, Runner, gpu_slots, visible_gpus
from .sweep_summary import FINAL, MANIFEST, lock_sweep, read_manifest, summarise, \
    write_manifest

OUTPUT = 'train_output.log'  # a variant's stdout and stderr, in its run folder
RESERVED = ('logging.folder', 'checkpoint.resume')  # the sweep sets these per variant
SAFE_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9._=+-]*')
NAME_LIMIT = 100  # characters of a generated run folder name
INTERRUPTED_EXIT = 130  # exit code after Ctrl-C, as the train command's
# exit codes of a child that a stop of the sweep ended before it could save
STOPPED_CODES = (INTERRUPTED_EXIT, -signal.SIGTERM, -signal.SIGINT)
TAIL_LINES = 5  # lines of a failed variant's output shown


# --- what to run -----------------------------------------------------------------

def parse_assignment(text: str, option: str) -> tuple[str, str]:
    """'section.key=value' (a leading '--' allowed) -> (key, value).
    Raises:
        ConfigError: not of that form; the message names ``option``.
    """
    key, equals, value = text.removeprefix('--').partition('=')
    if not equals or not re.fullmatch(r'[A-Za-z_]\w*(\.\w+)+', key.strip()):
        raise ConfigError(f"{option}: expected section.key=value, got {text!r}")
    return key.strip(), value.strip()


def parse_grid(items: list[str]) -> list[dict[str, str]]:
    """``['a.x=1,2', 'b.y=3,4']`` -> every combination as ``{key: value}``, the first
    key varying slowest: ``[{a.x: 1, b.y: 3}, {a.x: 1, b.y: 4}, {a.x: 2, ...}, ...]``.
    Raises:
        ConfigError: bad syntax, an empty or repeated value, a key given twice.
    """
    axes: dict[str, list[str]] = {}
    for item in items:
        key, text = parse_assignment(item, '--grid')
        values = [value.strip() for value in text.split(',')]
        if not all(values):
            raise ConfigError(f"--grid {key}: empty value in {text!r}")
        if len(set(values)) < len(values):
            raise ConfigError(f"--grid {key}: a value is repeated in {text!r}")
        if key in axes:
            raise ConfigError(f"--grid {key}: the key is given twice")
        axes[key] = values
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def variant_name(overrides: dict[str, str]) -> str:
    """The run folder name of a variant: its 'key=value' pairs joined by '__', each key
    without its section unless two keys end alike; characters other than letters,
    digits and ``._=+-`` become '-'; 'base' without overrides. A name longer than
    ``NAME_LIMIT`` is cut and ends in a hash of the whole, so it stays unique."""
    tails = [key.rsplit('.', 1)[-1] for key in overrides]
    text = '__'.join(f"{tail if tails.count(tail) == 1 else key}={value}"
                     for (key, value), tail in zip(overrides.items(), tails))
    name = re.sub(r'[^A-Za-z0-9._=+-]', '-', text) or 'base'
    if len(name) > NAME_LIMIT:
        name = f"{name[:NAME_LIMIT - 9]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return name


def name_variants(variants: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    """``{variant_name(overrides): overrides}`` in order.
    Raises:
        ConfigError: two variants would share a run folder.
    """
    named: dict[str, dict[str, str]] = {}
    for overrides in variants:
        name = variant_name(overrides)
        if name in named:
            raise ConfigError(f"two variants would share the run folder {name}: "
                              f"{named[name]} and {overrides}")
        named[name] = overrides
    return named


def _text(value) -> str:
    """A YAML value as the command line writes it (booleans as the flags' 1 and 0)."""
    return str(int(value)) if isinstance(value, bool) else str(value)


def read_variants(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """A YAML file of ``name: {section.key: value, ...}`` (nested sections allowed, an
    empty mapping for the recipe as it is) -> ``{name: {key: value as text}}``.
    Raises:
        ConfigError: an unreadable file, not such a mapping, or a name that cannot be
            a folder name.
    """
    try:
        content = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"--variants {path}: cannot read: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"--variants {path}: cannot parse: {err}".splitlines()[0]) from None
    if not isinstance(content, dict) or not content:
        raise ConfigError(f"--variants {path}: expected a mapping of variant name -> "
                          f"{{section.key: value}}")
    variants = {}
    for name, overrides in content.items():
        if not SAFE_NAME.fullmatch(str(name)):
            raise ConfigError(f"--variants {path}: variant name {name!r} is not a folder "
                              f"name (letters, digits and ._=+- only)")
        if not isinstance(overrides or {}, dict):
            raise ConfigError(f"--variants {path}: variant {name}: expected a mapping of "
                              f"section.key -> value, got {overrides!r}")
        variants[str(name)] = {key: _text(value)
                               for key, value in flatten_keys(overrides or {}).items()}
    return variants


@dataclass
class Plan:
    """A sweep: recipe files, fixed overrides, and ``variants`` (name -> overrides)
    whose runs go into ``sweep_dir/<name>``."""
    sweep_dir: Path
    configs: list[str]
    fixed: dict[str, str]
    variants: dict[str, dict[str, str]]

    @property
    def keys(self) -> list[str]:
        """The swept keys, in the order they first appear."""
        return list(dict.fromkeys(key for overrides in self.variants.values()
                                  for key in overrides))

    def run_dir(self, name: str) -> Path:
        return self.sweep_dir / name

    def train_args(self, name: str) -> list[str]:
        """The train command's arguments for variant ``name``; the last value of a key
        wins, so the variant's values beat ``fixed`` and those beat the recipes."""
        values = {**self.fixed, **self.variants[name]}
        return [*(part for config in self.configs for part in ('-C', config)),
                '--logging.progress=0',  # a progress bar in a log file is noise
                *(f'--{key}={value}' for key, value in values.items()),
                f'--logging.folder={self.run_dir(name)}', '--checkpoint.resume=auto']

    def check(self) -> None:
        """Checks every variant's config (keys, values, recipe and .beton files) as the
        train command will, so that a mistake stops the sweep before anything runs.
        Raises:
            ConfigError: naming the variant and the key or file.
        """
        for key in [*self.fixed, *self.keys]:
            if key in RESERVED:
                raise ConfigError(f"{key} is set by the sweep (one run folder per variant "
                                  f"under --out, resumed automatically)")
        for config in self.configs:
            find_config_file(config)
        for name in self.variants:
            try:
                config = parse_config('sweep', self.train_args(name), SECTIONS)
                check_values(config)
                for key in ('data.train_dataset', 'data.val_dataset'):
                    check_dataset(config, key)
            except ConfigError as err:
                raise ConfigError(f"variant {name}: {err}") from None


def make_plan(out: str, configs: list[str], grid: list[str], variants_file: str | None,
              fixed: list[str]) -> Plan:
    """The sweep into folder ``out`` of the ``grid`` (``key=v1,v2`` items) or of the
    variants in ``variants_file``, with ``fixed`` (``key=value`` items) for all.
    Raises:
        ConfigError: nothing to sweep, or bad syntax (see :meth:`Plan.check` for the
            keys and values themselves).
    """
    if variants_file and grid:
        raise ConfigError("give --grid or --variants, not both")
    if variants_file:
        variants = read_variants(variants_file)
    elif grid:
        variants = name_variants(parse_grid(grid))
    else:
        raise ConfigError("nothing to sweep: give --grid KEY=V1,V2 ... or --variants FILE")
    values = dict(parse_assignment(item, '--set') for item in fixed)
    return Plan(Path(out), list(configs), values, variants)


def is_finished(run_dir: Path) -> bool:
    """Whether the run trained all its epochs (or stopped early): ``final.pt`` exists.
    The log's ``end`` event would not do: ``training.stop_after`` ends runs early too."""
    return (checkpoint_dir(run_dir) / FINAL).is_file()


def outcome(code: int, finished: bool, stopping: bool) -> str:
    """What a variant's exit ``code`` means: 'finished', 'interrupted' (preempted, or
    ended by a stop of the sweep: a rerun resumes it), 'incomplete' (exit 0 before the
    last epoch: ``training.stop_after``) or 'failed'."""
    if finished:
        return 'finished'
    if code == PREEMPTED_EXIT or (stopping and code in STOPPED_CODES):
        return 'interrupted'
    return 'incomplete' if code == 0 else 'failed'


def say(message: str) -> None:
    print(f"sweep: {message}", flush=True)


class Bookkeeper:
    """Keeps the manifest's ``outcomes`` up to date as variants start and end, says
    so in one line each, and rewrites the summary after each variant."""

    def __init__(self, plan: Plan, manifest: dict):
        self.plan, self.manifest, self.started = plan, manifest, {}

    def start(self, job: Job, slot: str | None) -> None:
        self.started[job.name] = time.monotonic()
        self._record(job.name, status='running')
        say(f"[{job.name}] started{f' on GPU {slot}' if slot is not None else ''}, "
            f"output in {job.output}")

    def end(self, job: Job, code: int, stopping: bool) -> None:
        status = outcome(code, is_finished(self.plan.run_dir(job.name)), stopping)
        self._record(job.name, status=status, exit_code=code)
        seconds = time.monotonic() - self.started.pop(job.name)
        say(f"[{job.name}] {status} (exit code {code}) after {seconds:.0f} s")
        if status == 'failed':
            tail = job.output.read_text(errors='replace').splitlines()[-TAIL_LINES:]
            print('\n'.join(f"    {line}" for line in tail), flush=True)
        self.summarise()

    def _record(self, name: str, **fields) -> None:
        self.manifest['outcomes'][name] = fields
        write_manifest(self.plan.sweep_dir, self.manifest)

    def summarise(self) -> list[Path]:
        try:
            return summarise(self.plan.sweep_dir)
        except (OSError, ValueError) as err:  # the runs themselves are not affected
            say(f"warning: no summary written: {err}")
            return []


def run_sweep(plan: Plan, slots: list[str | None], python: str = sys.executable) -> int:
    """Trains every variant of ``plan`` that has not finished, at most one per slot at a
    time, then writes the summary. Returns the exit code: 0, 1 when a variant failed,
    75 when the sweep was stopped or preempted (130 for Ctrl-C)."""
    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_sweep(plan.sweep_dir)
    if lock is None:  # two sweeps would train in the same run folders
        raise ConfigError(f"{plan.sweep_dir} is in use by another sweep")
    try:
        old = read_manifest(plan.sweep_dir).get('outcomes', {}) \
            if (plan.sweep_dir / MANIFEST).is_file() else {}
        manifest = {'configs': plan.configs, 'fixed': plan.fixed, 'keys': plan.keys,
                    'variants': plan.variants,
                    'outcomes': {name: old[name] for name in plan.variants if name in old}}
        write_manifest(plan.sweep_dir, manifest)
        jobs = [Job(name, [python, '-m', 'ffcv_imagenet', 'train', *plan.train_args(name)],
                    plan.run_dir(name) / OUTPUT)
                for name in plan.variants if not is_finished(plan.run_dir(name))]
        say(f"{len(plan.variants)} variants in {plan.sweep_dir}: "
            f"{len(plan.variants) - len(jobs)} finished before, {len(jobs)} to run, "
            f"{len(slots)} at a time")
        books = Bookkeeper(plan, manifest)
        stopped_by = Runner(slots, books.start, books.end).run(jobs)
        for path in books.summarise():
            say(f"wrote {path}")
    finally:
        lock.close()
    failed = [name for name, fields in manifest['outcomes'].items()
              if fields.get('status') == 'failed']
    if stopped_by:
        say(f"stopped ({stopped_by}); run the same command again to continue")
        return INTERRUPTED_EXIT if stopped_by == 'SIGINT' else PREEMPTED_EXIT
    if failed:
        say(f"{len(failed)} variant(s) failed: {', '.join(failed)} (their output is in "
            f"<variant>/{OUTPUT}; a rerun tries them again)")
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('-C', '--config', dest='configs', action='append', default=[],
                        metavar='FILE', help="the recipe(s), as train's -C")
    parser.add_argument('--out', metavar='DIR', help='the sweep folder: one run folder '
                        'per variant, sweep.json, summary.md/.csv, val_top1.png')
    parser.add_argument('--grid', nargs='+', action='extend', default=[],
                        metavar='KEY=V1,V2', help='swept keys: every combination runs')
    parser.add_argument('--variants', metavar='FILE', help='YAML: name -> {key: value}')
    parser.add_argument('--set', dest='fixed', action='append', default=[],
                        metavar='KEY=VALUE', help='a value for every variant (repeat)')
    parser.add_argument('--gpus', metavar='auto|N|I,J',
                        help='one variant per GPU at a time: all visible, the first N, '
                             'or these positions (default: one variant at a time)')
    parser.add_argument('--parallel', type=int, default=1, metavar='N',
                        help='without --gpus: N variants at a time (default 1)')
    parser.add_argument('--summarise-only', '--summarize-only', metavar='DIR',
                        help='only rewrite the summary of the sweep in DIR (may be running)')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.summarise_only:
        try:
            paths = summarise(args.summarise_only)
        except FileNotFoundError as err:
            raise ConfigError(str(err)) from None
        print('\n'.join(map(str, paths)))
        return 0
    if not args.out:
        raise ConfigError("--out DIR is required: the sweep folder")
    plan = make_plan(args.out, args.configs, args.grid, args.variants, args.fixed)
    plan.check()
    slots = gpu_slots(args.gpus, args.parallel, visible_gpus() if args.gpus else [])
    return run_sweep(plan, slots)


def run(argv: list[str] | None = None) -> int:
    """:func:`main` with the errors a user can cause turned into one line and exit
    code 2."""
    return exit_code(lambda: main(argv))


if __name__ == '__main__':
    sys.exit(run())
