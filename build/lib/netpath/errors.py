"""Errors that reach the user as one line and a contract exit code."""

from __future__ import annotations

EXIT_OK = 0
EXIT_THRESHOLD = 1
EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3


class NetpathError(Exception):
    exit_code = EXIT_ENVIRONMENT


class BadInput(NetpathError):
    """The user asked for something that does not exist or is out of range."""

    exit_code = EXIT_USAGE


class MissingCapability(NetpathError):
    """This environment cannot run the command; the message says how to fix it."""

    exit_code = EXIT_ENVIRONMENT


class OutputClosed(Exception):
    """stdout's reader is gone (EPIPE). Not an OSError: click would turn that into exit 1."""
