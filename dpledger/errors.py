"""The command line's errors and their exit codes: one hierarchy, one mapping, for every command.

========  ==================================================================================
code      meaning
========  ==================================================================================
0         done
1         the ledger service could not be reached or failed (no answer, HTTP 5xx), or the
          command failed at run time (a port already in use, an engine that stopped)
2         invalid input: a bad option, an unknown dataset or run, a rejected token, a missing
          file; one line on stderr says which, and nothing was trained or charged
3         refused by the privacy budget (the ledger's or a local one): the JSON summary on
          stdout says what ran before the refusal
========  ==================================================================================

Commands raise; they never choose a status themselves. The root command (``dpledger.cli``) runs
every command inside :func:`one_line_errors`, which calls :func:`exit_code_of`: the one place
where an error becomes a status and exactly one line on stderr, never a traceback. Click's own
usage errors (an unknown option, a missing required one) also exit 2.

The hierarchy is rooted in :class:`dp_core.trainer.exit_codes.CommandError`, which the
``train`` command (in ``dp_core``, which may not import ``dpledger``) raises too;
:func:`exit_code_of` extends the trainer's mapping with the errors only ``dpledger`` knows (those
of :mod:`dpledger.client`). Foreign modules are looked up in ``sys.modules``, never imported
here: an error cannot be an instance of a class whose module was never loaded.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from dp_core.trainer.exit_codes import CommandError, ExitCode
from dp_core.trainer.exit_codes import exit_code_of as _trainer_exit_code_of

__all__ = [
    "BudgetRefusal",
    "CommandError",
    "ExitCode",
    "RuntimeFailure",
    "UsageError",
    "exit_code_of",
    "ledger_at",
    "one_line_errors",
]


class UsageError(CommandError):
    """Invalid input (exit 2); the message is printed as it is, prefixed ``error:``."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}", exit_code=ExitCode.USAGE)


class BudgetRefusal(CommandError):
    """Refused by the privacy budget (exit 3); the message is printed as it is."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=ExitCode.REFUSED)


class RuntimeFailure(CommandError):
    """The service was unreachable or failed, or the command failed at run time (exit 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}", exit_code=ExitCode.FAILURE)


def _client_exit_code(error: BaseException) -> ExitCode | None:
    client = sys.modules.get("dpledger.client")
    if client is None or not isinstance(error, client.LedgerError):
        return None
    if isinstance(error, client.BudgetExceeded):
        return ExitCode.REFUSED
    status = error.status
    return ExitCode.USAGE if status is not None and 400 <= status < 500 else ExitCode.FAILURE


def _admin_exit_code(error: BaseException) -> ExitCode | None:
    admin = sys.modules.get("app.cli")
    if admin is None or not isinstance(error, admin.AdminCommandError):
        return None
    return ExitCode(error.exit_code)


def _printed_as_is(error: BaseException) -> bool:
    admin = sys.modules.get("app.cli")
    return isinstance(error, CommandError) or (
        admin is not None and isinstance(error, admin.AdminCommandError)
    )


def exit_code_of(error: BaseException) -> ExitCode | None:
    """Return the exit status of ``error``, or ``None`` for an error no command should raise.

    The trainer's mapping (:func:`dp_core.trainer.exit_codes.exit_code_of`: command errors,
    dp_core's invalid parameters, the trainer's ledger errors, missing files) extended with
    :mod:`dpledger.client`'s errors (a budget refusal is 3, another 4xx answer is the caller's
    input: 2, no answer or a 5xx is a failure: 1) and the admin commands' errors of
    :mod:`app.cli` (which may not import the trainer's hierarchy: 2, or 1 when ``serve`` cannot
    listen).
    """
    for mapping in (_trainer_exit_code_of, _client_exit_code, _admin_exit_code):
        code = mapping(error)
        if code is not None:
            return code
    return None


@contextmanager
def ledger_at(url: str) -> Iterator[None]:
    """Name the ledger's URL in the one line of a client error raised inside (status unchanged).

    A budget refusal passes through as it is (the command reports it, exit 3).
    """
    try:
        yield
    except Exception as error:
        client = sys.modules.get("dpledger.client")
        if client is None or not isinstance(error, client.LedgerError):
            raise
        if isinstance(error, client.BudgetExceeded):
            raise
        code = exit_code_of(error) or ExitCode.FAILURE
        text = " ".join(str(error).split())
        raise CommandError(f"error: the ledger at {url}: {text}", exit_code=code) from None


def one_line(error: BaseException) -> str:
    """The one stderr line for ``error``: a command error's message as it is, else ``error: ...``."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if _printed_as_is(error) else f"error: {text}"


def _leave(error: BaseException, code: ExitCode) -> NoReturn:
    print(one_line(error), file=sys.stderr, flush=True)
    raise SystemExit(int(code))


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a known error (see :func:`exit_code_of`) into one stderr line and its exit status."""
    try:
        yield
    except Exception as error:
        code = exit_code_of(error)
        if code is None:
            raise
        _leave(error, code)
