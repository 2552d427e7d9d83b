"""Errors a person fixes (a config key, a data row), and how the commands report them.

Their messages already name the key, file or row and what to do, so a traceback adds only
noise: the Hydra entry points (`python -m train`, `python -m train.prepare`) wrap their task in
`one_line_user_errors`, which prints `error: <message>` on stderr and exits with status 2. It
raises SystemExit, which passes through Hydra's own reporting (that prints a traceback for any
Exception) untouched.
"""

from __future__ import annotations

import functools
import sys

USER_ERROR_EXIT_STATUS = 2  # as argparse and Hydra use for a bad command line


class ConfigError(ValueError):
    """A setting that cannot work; the message names the key and what to do."""


class DataError(ValueError):
    """The data cannot be prepared; the message names the file, the row and what to do."""


def one_line_user_errors(task):
    """Decorate a Hydra task function: a ConfigError or DataError ends the command with one line."""

    @functools.wraps(task)
    def wrapper(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except (ConfigError, DataError) as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(USER_ERROR_EXIT_STATUS) from None

    return wrapper
