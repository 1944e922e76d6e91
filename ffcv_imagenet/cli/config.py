"""Command line + YAML/JSON config files -> a validated fastargs config.

Used by the commands only (:mod:`ffcv_imagenet.cli`, :mod:`ffcv_imagenet.tools`);
the library never reads config. Compared with fastargs' own argparse glue this adds:
config files and keys that do not exist are errors (a typo must not silently fall
back to a default), a validation error is one line naming the key, and the
command line can be passed in as a list (tests).

Precedence: defaults < config files (in order) < ``--section.key=value`` flags. A
config file named without a folder that is not in the current folder is looked up
among the shipped recipes (``rn50_configs/``).

A switch (:func:`register_switch`, e.g. ``training.parity``) is a key whose value sets
other keys: over the defaults and the files before the one that sets the switch; a
different value beside or after the switch (the same file, a later one, the command
line) is an error naming both keys.
"""
from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path

import yaml
from fastargs import get_current_config
from fastargs.exceptions import MissingValueError
from fastargs.validation import Checker


class ConfigError(ValueError):
    """A bad config file, key or value; the message names it."""


class OneOf(Checker):
    """One of a fixed set of values (for strings and enumerations)."""

    def __init__(self, *choices):
        self.choices = choices

    def check(self, value):
        if value not in self.choices:
            raise ValueError(value)
        return value

    def help(self):
        return 'one of ' + ', '.join(map(str, self.choices))


class Flag(Checker):
    """0 or 1 (fastargs' bool would read the string '0' as True)."""

    def check(self, value):
        if str(value).strip().lower() in ('1', 'true', 'yes'):
            return 1
        if str(value).strip().lower() in ('0', 'false', 'no'):
            return 0
        raise ValueError(value)

    def help(self):
        return '0 or 1'


def flatten_keys(tree: dict, prefix: str = '') -> dict[str, object]:
    """Nested YAML sections as flat keys: ``{'lr': {'lr': 0.1}}`` -> ``{'lr.lr': 0.1}``."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_keys(value, name + '.'))
        else:
            flat[name] = value
    return flat


RECIPES = 'rn50_configs'

# switch key -> {its value -> {key: value it sets}} (see the module's docstring)
_SWITCHES: dict[str, dict[str, dict[str, object]]] = {}


def register_switch(key: str, settings: dict[str, dict[str, object]]) -> None:
    """Declares ``key`` a switch: its value ``v`` sets the keys of ``settings[v]``
    (values not listed set nothing)."""
    _SWITCHES[key] = settings


def switch_settings(config, key: str) -> dict[str, object]:
    """The keys and values that switch ``key`` sets with its current value."""
    return _SWITCHES.get(key, {}).get(config[key], {})


def _apply_switches(config, known: set[str], layers: dict[str, int]) -> None:
    """Sets the keys of each switch among ``known``; ``layers``: key -> where its
    value came from (1, 2, ...: the config files in order, then the command line;
    absent: the default).
    Raises:
        ConfigError: a key set beside or after the switch to another value.
    """
    for switch in sorted(_SWITCHES.keys() & known):
        for key, value in switch_settings(config, switch).items():
            param = config.entries[tuple(key.split('.'))]
            wanted = param.validate(value)
            if key in layers and layers[key] >= layers.get(switch, 0) \
                    and config[key] != wanted:
                raise ConfigError(f"{key}={config[key]} contradicts {switch}="
                                  f"{config[switch]}, which sets {key}={wanted}")
            config.collect({key: wanted})


def recipe_dirs() -> list[Path]:
    """The folders of the shipped recipes that exist here: the copy installed inside
    the package (a wheel), then the one beside the package (a source checkout, where
    it sits next to ``train_imagenet.py``)."""
    package = Path(__file__).resolve().parents[1]
    return [folder for folder in (package / RECIPES, package.parent / RECIPES)
            if folder.is_dir()]


def available_recipes() -> list[str]:
    """File names of the shipped recipes, sorted."""
    return sorted({path.name for folder in recipe_dirs() for path in folder.glob('*.yaml')})


def find_config_file(name: str) -> Path:
    """The config file ``name`` names: a path as given (relative to the current
    folder), or, for a bare file name (no folder, ``.yaml`` optional), the shipped
    recipe of that name.
    Raises:
        ConfigError: no such file; for a bare name the message lists the recipes.
    """
    path = Path(name)
    if path.is_file():
        return path
    if path.parent == Path('.'):
        for folder in recipe_dirs():
            for candidate in (folder / name, folder / f'{name}.yaml'):
                if candidate.is_file():
                    return candidate
        where = ', '.join(str(folder) for folder in recipe_dirs()) or f'no {RECIPES}/ found'
        raise ConfigError(f"config file not found: {name} (looked in the current folder and "
                          f"{where}; recipes: {', '.join(available_recipes()) or 'none'})")
    raise ConfigError(f"config file not found: {name}")


def _read_config_file(path: str, known: set[str]) -> dict[str, object]:
    file = find_config_file(path)
    text = file.read_text()
    try:
        content = json.loads(text) if file.suffix == '.json' else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot parse: {err}".splitlines()[0]) from None
    flat = flatten_keys(content or {})
    for key in flat:
        if key not in known:
            raise ConfigError(f"{path}: unknown config key '{key}'")
    return flat


def _unknown_option(argument: str, known: set[str]) -> str:
    """'unknown config key ...' with the closest known key, for typos."""
    key = argument.split('=')[0].lstrip('-')
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f" (did you mean --{close[0]}?)" if close else ""
    return f"unknown config key '{key}' on the command line{hint}"


def parse_config(description: str, argv: list[str] | None = None,
                 sections: tuple[str, ...] | None = None):
    """Collects and validates the sections declared before the call (only those
    named in ``sections`` when given: fastargs keeps one registry per process, and a
    process that imports two entry points, such as the tests, holds both).

    Returns the fastargs ``Config``; ``config['section.key']`` reads a value.
    Raises:
        ConfigError: a missing or unparsable file, an unknown key, a bad value.
    """
    config = get_current_config()
    config.content.clear()  # values from an earlier call in this process must not leak in
    known = {'.'.join(path) for path in config.entries
             if sections is None or path[0] in sections}
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('-C', '--config', '--config-file', dest='config_file',
                        action='append', default=[], metavar='FILE',
                        help='YAML or JSON config file, or the name of a shipped recipe '
                             f'({RECIPES}/); may be repeated, later files win')
    for name in sorted(known):
        param = config.entries[tuple(name.split('.'))]
        default = 'required' if param.required else param.default
        parser.add_argument(f'--{name}', metavar='V',
                            help=f"{param.desc} ({param.checker.help()}; default {default})")
    parsed, unknown = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if unknown:
        raise ConfigError(_unknown_option(unknown[0], known))
    args = vars(parsed)
    files = [_read_config_file(path, known) for path in args.pop('config_file')]
    layers = {}  # key -> what set it last: the files 1, 2, ..., then the command line
    for layer, values in enumerate([*files, args], start=1):
        values = {k: v for k, v in values.items() if v is not None}
        config.collect(values)
        layers.update(dict.fromkeys(values, layer))
    errors = config.validate(mode='errordict')
    for path, error in errors.items():
        if '.'.join(path) not in known:
            continue
        key = '.'.join(path)
        if isinstance(error, MissingValueError):
            raise ConfigError(f"missing required config value --{key}")
        param = config.entries[path]
        raise ConfigError(f"bad value for {key}: {config.content.get(path)!r} "
                          f"(expected {param.checker.help()})")
    _apply_switches(config, known, layers)
    return config


def as_dict(config, sections: tuple[str, ...] | None = None) -> dict[str, object]:
    """The resolved config (of ``sections`` only, when given) as a flat
    {'section.key': value} dict, for logs and checkpoints."""
    return {'.'.join(path): config[path] for path in config.entries
            if sections is None or path[0] in sections}
