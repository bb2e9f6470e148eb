"""The engine's errors, each a ``CanopyError`` (the CLI prints their one-line
message) and a ``ValueError``. They live in this leaf module so that every part
of the engine can raise them without importing another part; each is also
importable from the module that raises it (``engine.config.ConfigError``, ...)."""

from __future__ import annotations

from canopy.errors import CanopyError


class ConfigError(CanopyError, ValueError):
    """A setting is out of range or unknown; the message names it and the valid values."""


class TaskError(CanopyError, ValueError):
    """A task cannot give the problems asked for (bad file, bad index, bad setting)."""


class ModelError(CanopyError, ValueError):
    """A model name or file that cannot be used; the message names the fix."""


class BackendError(CanopyError, ValueError):
    """A backend cannot be used as asked; the message names the fix."""


class CriticCheckpointError(CanopyError, ValueError):
    """A trained critic's checkpoint is missing, broken, or made for another model."""


class ValueCheckpointError(CriticCheckpointError):
    """A value-head checkpoint is missing, broken, or made for another model."""


class RunNotResumable(CanopyError, ValueError):
    """The run id does not exist or the run has nothing left to do."""


class WorkerError(CanopyError, ValueError):
    """Fanned-out work cannot run: Ray is missing or unreachable, a worker could
    not start, or one problem keeps killing its workers."""
