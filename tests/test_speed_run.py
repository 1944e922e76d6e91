"""The speed-run settings of docs/recipes.md: only validation, checkpoint and logging
keys change, so a published recipe trains exactly as without them."""
import re
import shlex

from ffcv_imagenet.cli.config import as_dict, parse_config
from ffcv_imagenet.cli.train_config import SECTIONS
from tests.support import ROOT

UNTRAINED = ('validation', 'checkpoint', 'logging')  # sections training never reads


def speed_run_flags() -> list[str]:
    """The command-line flags of the code block under "Speed-run settings"."""
    text = (ROOT / 'docs' / 'recipes.md').read_text()
    section = text.split('## Speed-run settings', 1)[1]
    block = re.search(r'```bash\n(.*?)```', section, re.S).group(1)
    return shlex.split(block.replace('\\\n', ' '))


def test_the_speed_run_settings_leave_every_training_key_of_the_recipe_as_it_was():
    flags = speed_run_flags()
    # the required keys given, so that the comparison reads every key
    recipe = ['-C', str(ROOT / 'rn50_configs' / 'rn50_32_epochs.yaml'),
              '--data.train_dataset=t.beton', '--data.val_dataset=v.beton',
              '--logging.folder=run']
    # the training command's sections only: a test run in the same process may have
    # declared another command's (the converter's required cfg.data_dir)
    plain = as_dict(parse_config('test', recipe, SECTIONS), SECTIONS)
    fast = as_dict(parse_config('test', recipe + flags, SECTIONS), SECTIONS)
    changed = {key for key in plain if plain[key] != fast[key]}
    assert changed == {flag[2:].split('=')[0] for flag in flags}  # each flag changes a key
    assert all(key.split('.')[0] in UNTRAINED for key in changed)
    assert fast['validation.start_epoch'] < fast['training.epochs']  # the end is watched
