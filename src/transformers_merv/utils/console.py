"""Console commands (`merv`, `conversion/convert_merv_to_hf.py`): a failure is one `error:` line on stderr and exit
status 1; with `--debug` or `MERV_DEBUG=1`, the traceback instead."""

import argparse
import os
import sys
from collections.abc import Callable

from huggingface_hub.errors import StrictDataclassError


DEBUG_ENVIRONMENT_VARIABLE = "MERV_DEBUG"
"""Set to 1 for the full traceback of a failure instead of the one `error:` line (as `--debug` does)."""
EXIT_ERROR = 1
EXPECTED_ERRORS = (OSError, ValueError, StrictDataclassError)
"""Failures of the user's input (missing or unreadable files, bad values, a config value outside its field's
choices): reported by their message alone."""


def first_line(err: BaseException) -> str:
    """The first non-empty line of an error's message (its type's name when it has none), joined with the next line
    when it ends with a colon, which introduces the cause (as in huggingface_hub's strict validation errors)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    return " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]


def one_line(text: str) -> str:
    """`text` on one line (its line breaks as spaces), so that answers are one per line."""
    return " ".join(text.splitlines())


def add_debug_argument(parser: argparse.ArgumentParser, default: object = argparse.SUPPRESS) -> None:
    """`--debug`, before or after a command (a sub-command's parser leaves the top-level value alone unless given)."""
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help=f"show the full traceback of a failure (also: {DEBUG_ENVIRONMENT_VARIABLE}=1)",
    )


def run_reporting_errors(
    run: Callable[[argparse.Namespace], int],
    args: argparse.Namespace,
    expected: tuple[type[BaseException], ...] = EXPECTED_ERRORS,
) -> int:
    """`run(args)`, a failure reported as one `error:` line with exit status 1 (`args.debug` or `MERV_DEBUG=1`:
    raised, with its traceback). `expected` errors show their message alone; others their type too."""
    try:
        return run(args)
    except Exception as err:  # noqa: BLE001 - every failure is one line unless debugging
        if getattr(args, "debug", False) or os.environ.get(DEBUG_ENVIRONMENT_VARIABLE, "0") not in ("", "0"):
            raise
        print(f"error: {_error_message(err, expected)}", file=sys.stderr)
        return EXIT_ERROR


def _error_message(err: Exception, expected: tuple[type[BaseException], ...]) -> str:
    if isinstance(err, expected):
        return first_line(err)
    return f"{type(err).__name__}: {first_line(err)} (--debug or {DEBUG_ENVIRONMENT_VARIABLE}=1 shows the traceback)"
