"""Errors of pipeline stages: a message names the stage, the micro-batch and what is missing."""

from pac.errors import PacError


class PipelineError(PacError):
    """A stage was given inputs it cannot run on, or a schedule cannot make progress."""
