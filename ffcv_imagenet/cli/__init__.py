"""The config edge: command line and recipe files -> a built run, and the two main
commands (convert, train) that ``write_datasets.py`` and ``train_imagenet.py`` call.

- :mod:`.config`: command line + YAML/JSON files -> validated fastargs config; recipe lookup
- :mod:`.train_config`: every training key, its default and its range checks
- :mod:`.recipe`: parsed config -> loaders, model, optimizer, schedules, EMA, resume (a ``Run``)
- :mod:`.resume`: the checkpoint a run continues from, and whether it may
- :mod:`.runner`: one-line errors and exit codes shared by every command
- :mod:`.convert`: the conversion command (``write_datasets.py``)
- :mod:`.train`: the training command (``train_imagenet.py``)
- :mod:`.model_file`: a checkpoint, run folder or export -> a classifier and its card
- :mod:`.export`, :mod:`.predict`, :mod:`.evaluate`: the commands that use a trained model

Only this package and the tools read configuration; the library below it takes
explicit arguments.
"""
