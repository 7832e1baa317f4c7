"""Errors raised on workers, and the error of a job that cannot run as written.

:class:`SpecError` names *where* in the job document the problem is (a dotted field such as
``window.patch_size``) and *why*. The control plane raises it while parsing a document, the engine
while checking what the document names (the input, the model, an existing output); ``pytc run``
prints it and exits 2, the REST service answers 422 (409 for :class:`OutputExistsError`). A document
can hold several problems at once: all are kept in :attr:`SpecError.errors`, the first one also
being :attr:`~SpecError.field` / :attr:`~SpecError.reason`. It survives pickling (Dask hands a
worker's exception to the client).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class WorkerError(Exception):
    """Base of every error raised by :mod:`workers`."""


class BlockError(WorkerError, RuntimeError):
    """A block could not be computed; the message names the block or chunk and the cause."""


class BlockCancelledError(WorkerError):
    """The job was cancelled while this block ran; nothing was recorded done for it."""


class PathEscapeError(WorkerError, PermissionError):
    """A path of a running job now resolves outside the data roots (a symlink swapped in after the
    job was admitted); nothing is read or written through it."""


class SpecError(WorkerError, ValueError):
    """A job document (or what it names) that cannot be run as written."""

    def __init__(self, field: str, reason: str, *, errors: Sequence[tuple[str, str]] | None = None) -> None:
        self.field = field
        self.reason = reason
        self.errors: tuple[tuple[str, str], ...] = tuple(errors) if errors else ((field, reason),)
        # One argument only: ``OSError`` subclasses would read two as (errno, strerror).
        super().__init__(self._message())

    def _message(self) -> str:
        first = f"{self.field}: {self.reason}" if self.field else self.reason
        more = len(self.errors) - 1
        return first if more <= 0 else f"{first} (and {more} more)"

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep field, reason and the full list through pickling (Dask, multiprocessing).
        return (_rebuild_spec_error, (type(self), self.field, self.reason, self.errors))


def _rebuild_spec_error(
    cls: type[SpecError], field: str, reason: str, errors: tuple[tuple[str, str], ...]
) -> SpecError:
    return cls(field, reason, errors=errors)


@dataclass(frozen=True)
class Refusal:
    """A check on a worker found that the job cannot run as written: returned, not raised.

    Dask logs every exception a task raises (``Compute Failed`` with a traceback) in the worker's
    log, which is the service's log or ``pytc run``'s terminal for an embedded cluster; a job the
    user can fix deserves one clean line naming the field instead. So the checks that run on a
    worker return this, and their caller raises :meth:`error`."""

    errors: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, err: SpecError) -> Refusal:
        return cls(err.errors)

    def error(self) -> SpecError:
        field, reason = self.errors[0]
        return SpecError(field, reason, errors=self.errors)


class OutputExistsError(SpecError, FileExistsError):
    """The output exists, was not made by this same job, and ``overwrite`` is false (HTTP 409)."""


class IncompleteRunError(WorkerError, RuntimeError):
    """A run ended without every block recorded done: the output stays marked incomplete."""
