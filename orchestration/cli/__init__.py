"""The `cameo` command line (click): the group in `main.py`, one module per command group.

This package file imports none of them, so that torchrun can run `-m orchestration.cli.train`
as `__main__` without the module already being imported.
"""
