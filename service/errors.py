"""Errors of the control plane. Each also subclasses the matching builtin.

A :class:`SpecError` names *where* in the job document the problem is (a dotted field such as
``window.patch_size``) and *why*; the CLI prints it and exits 2, the REST service maps it to 422
(409 for :class:`OutputExistsError`). A document can hold several problems at once: they are all
kept in :attr:`SpecError.errors`, the first one also being :attr:`field` / :attr:`reason`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ServiceError(Exception):
    """Base of every error raised by :mod:`service`."""


class SpecError(ServiceError, ValueError):
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


class OutputExistsError(SpecError, FileExistsError):
    """The output exists, was not made by this same job, and ``overwrite`` is false (HTTP 409)."""


class PathOutsideRootsError(SpecError, PermissionError):
    """A path in the job resolves (symlinks followed) outside every data root."""


class SchedulerUnavailableError(ServiceError, ConnectionError):
    """The Dask scheduler named by ``--scheduler`` / ``PYTC_SCHEDULER`` cannot be reached."""


class JobFailedError(ServiceError, RuntimeError):
    """The job ran but did not finish: a block failed after its retries, or the output is incomplete."""


class JobCancelledError(ServiceError):
    """The job was cancelled before it finished; what is done stays done and a rerun resumes."""
