"""Errors whose message is safe to show anywhere: a terminal, a log line, Dagster's event log.

They name files, columns, row numbers, policy fields and request ids, never a data value (a value
may be a personal identifier). The CLI prints them as one line; when one ends a Dagster step, the
runner finds it by class name in the step's failure and prints that same line.
"""

from __future__ import annotations


class PipelineError(ValueError):
    """A failure the user can act on, with a message that repeats no data value."""


def safe_error_names() -> frozenset[str]:
    """Class names of every :class:`PipelineError` subclass imported so far (and its own)."""
    names, todo = {PipelineError.__name__}, list(PipelineError.__subclasses__())
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return frozenset(names)
