"""The errors the package raises about what it was given (arguments, files, installs).

Each is also the matching builtin (ValueError, TypeError, ImportError), so `except ValueError`
keeps working. The CLI prints any `SidmlpError` as one line (the user can fix it) and lets every
other exception, a bug, through with its traceback.
"""

from __future__ import annotations

__all__ = ["InvalidInput", "InvalidInputType", "MissingDependency", "SidmlpError"]


class SidmlpError(Exception):
    """Base of the errors about the caller's input: the message says what was expected."""


class InvalidInput(SidmlpError, ValueError):
    """A value out of range, of the wrong shape, or inconsistent with another input."""


class InvalidInputType(SidmlpError, TypeError):
    """An argument of the wrong type."""


class MissingDependency(SidmlpError, ImportError):
    """Something the request needs is not installed or downloaded; the message says how to get it."""
