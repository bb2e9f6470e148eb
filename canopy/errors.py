"""The one error type every part of Canopy raises for bad input.

Each layer names its own kind (``ConfigError``, ``StoreError``, ``BackendError``,
...) as a subclass, with a one-line message that says what to do; the CLI
catches ``CanopyError`` alone and prints that line. This module imports
nothing, so the store, the engine and the app may all depend on it.
"""

from __future__ import annotations


class CanopyError(Exception):
    """Bad input or an unusable environment, explained in one line."""


class UsageError(CanopyError):
    """A command line that cannot work as given (found by the CLI itself)."""
