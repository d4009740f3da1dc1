"""Exit codes of the ``dpledger`` commands, and the one place that turns errors into them.

========  ==================================================================================
code      meaning
========  ==================================================================================
0         done
1         the ledger service could not be reached, or failed (HTTP 5xx)
2         invalid input (a bad option, an unknown dataset, a rejected token): one line on
          stderr says which; nothing was trained or charged
3         refused by the privacy budget: the run stopped before its planned end (the JSON
          summary on stdout says how many epochs ran)
========  ==================================================================================

Every command of the root CLI (``dpledger.cli``) runs inside :func:`one_line_errors`, and
``dpledger train`` is also wrapped on its own (:func:`exit_on_error`), so it behaves the same when
registered on another Typer app. Errors become exactly one line on stderr, never a traceback.
This module imports neither torch nor typer.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import IntEnum
from typing import NoReturn, ParamSpec, TypeVar

from dp_core.errors import DpCoreError
from dp_core.trainer.errors import LedgerError

__all__ = ["CommandError", "ExitCode", "exit_code_of", "exit_on_error", "one_line_errors"]

P = ParamSpec("P")
R = TypeVar("R")


class ExitCode(IntEnum):
    """The documented exit statuses of ``dpledger`` commands."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    REFUSED = 3


class CommandError(Exception):
    """An outcome a command reports as one line on stderr and an exit code.

    Attributes:
        exit_code: The status the process exits with.
    """

    def __init__(self, message: str, *, exit_code: ExitCode) -> None:
        """Create the error; ``message`` is printed as it is (say what happened and why)."""
        self.exit_code = exit_code
        super().__init__(message)


def exit_code_of(error: BaseException) -> ExitCode | None:
    """Return the exit code for ``error``, or ``None`` when it is not a known user-facing error.

    A ledger answer in the 4xx range (unknown dataset, bad token, invalid request) is the
    caller's input; no answer or a 5xx is a failure of the service.
    """
    if isinstance(error, CommandError):
        return error.exit_code
    if isinstance(error, LedgerError):
        client_side = error.status is not None and 400 <= error.status < 500
        return ExitCode.USAGE if client_side else ExitCode.FAILURE
    if isinstance(error, DpCoreError):
        return ExitCode.USAGE
    if isinstance(error, FileNotFoundError | PermissionError | IsADirectoryError):
        return ExitCode.USAGE
    return None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if isinstance(error, CommandError) else f"error: {text}"


def _leave(error: BaseException, code: ExitCode) -> NoReturn:
    print(_one_line(error), file=sys.stderr, flush=True)
    raise SystemExit(int(code))


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a known error (see :func:`exit_code_of`) into one stderr line and its exit code."""
    try:
        yield
    except Exception as error:
        code = exit_code_of(error)
        if code is None:
            raise
        _leave(error, code)


def exit_on_error(command: Callable[P, R]) -> Callable[P, R]:
    """Decorate a command so that it exits through :func:`one_line_errors`."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with one_line_errors():
            return command(*args, **kwargs)

    return wrapper
