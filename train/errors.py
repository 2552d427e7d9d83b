"""Errors a person fixes (a config key, a data row), and how the commands report them.

Their messages already name the key, file or row and what to do, so a traceback adds only
noise: the Hydra entry points (`python -m train`, `python -m train.prepare`) wrap their task in
`one_line_user_errors`, which prints `error: <message>` on stderr and exits with status 2. It
raises SystemExit, which passes through Hydra's own reporting (that prints a traceback for any
Exception) untouched.
"""

from __future__ import annotations

import functools

from common.cli_errors import USAGE_ERROR, exit_with, explain, full_error

USER_ERROR_EXIT_STATUS = USAGE_ERROR  # as argparse and Hydra use for a bad command line


class ConfigError(ValueError):
    """A setting that cannot work; the message names the key and what to do."""


class DataError(ValueError):
    """The data cannot be prepared; the message names the file, the row and what to do."""


def one_line_user_errors(task):
    """Decorate a Hydra task function: a ConfigError or DataError, or a missing setup a library
    reports (common.cli_errors.explain: Azure login, quota, an uncached hub model offline), ends
    the command with one line and status 2 (HYDRA_FULL_ERROR=1: the traceback)."""

    @functools.wraps(task)
    def wrapper(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except (ConfigError, DataError) as e:
            if full_error():
                raise
            exit_with(str(e), USER_ERROR_EXIT_STATUS)
        except Exception as e:
            message = explain(e)
            if message is None or full_error():
                raise
            exit_with(message, USER_ERROR_EXIT_STATUS)

    return wrapper
