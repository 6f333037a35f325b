"""Typed errors. Each carries a message a person can act on; the CLI prints it as one line."""


class PacError(Exception):
    """Base class of every error the product raises on purpose."""


class ModelNotFoundError(PacError):
    """A model name or path that cannot be resolved to weights on this machine."""


class DataError(PacError):
    """A data file that cannot be read as the task asks; the message names the file, line and column."""


class ConfigError(PacError):
    """A configuration value that is missing or out of range; the message names the key."""


class AdapterMismatchError(PacError):
    """A saved adapter that does not belong to the backbone it is being attached to."""


class TrainingFailed(PacError):
    """A device failed during a job, or the job cannot run on its devices; the message names which and why."""
