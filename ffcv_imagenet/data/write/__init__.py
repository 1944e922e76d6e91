"""The write side: (path, label) lists -> a ``.beton``, never crashing on a file.

- :mod:`.images`: one file -> RGB pixels, or the reason it cannot be read
- :mod:`.sandbox`: runs decoders on untrusted files in disposable child processes (time
  and memory limits, stderr captured, crashes survived)
- :mod:`.writer`: (path, label) list -> ``.beton``, atomically, with a report of skipped
  files
- :mod:`.storage`: the storage presets, and the record of how a ``.beton`` was written
"""
