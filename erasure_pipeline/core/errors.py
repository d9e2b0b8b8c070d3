"""Errors whose message is safe to show anywhere: a terminal, a log line, Dagster's event log.

They name files, columns, row numbers, policy fields and request ids, never a data value (a value
may be a personal identifier). The CLI prints them as one line; when one ends a Dagster step, the
runner finds it by class name in the step's failure and prints that same line.
"""

from __future__ import annotations


class PipelineError(ValueError):
    """A failure the user can act on, with a message that repeats no data value."""


class BlockingError(PipelineError):
    """A cause outside the requests a run was working on (a malformed landing file, a damaged object, an
    outage): every request would fail the same way until someone fixes it. A run that fails with one does
    not use up its requests' attempts; they are retried, with backoff, until the cause is gone, and
    ``status --overdue`` names the cause."""


class DamagedObject(BlockingError):
    """A stored object that cannot be read as what it should be (a corrupted file, a truncated write)."""


class StorageUnavailable(BlockingError):
    """A store that cannot be written now: its disk is full, it is read-only, or it is gone. The message names
    the store and what to do; the requests resume by themselves once it is writable again."""


def _names(root: type) -> frozenset[str]:
    names, todo = {root.__name__}, list(root.__subclasses__())
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return frozenset(names)


def safe_error_names() -> frozenset[str]:
    """Class names of every :class:`PipelineError` subclass imported so far (and its own)."""
    return _names(PipelineError)


def blocking_error_names() -> frozenset[str]:
    """Class names of every :class:`BlockingError` subclass imported so far (and its own)."""
    return _names(BlockingError)
