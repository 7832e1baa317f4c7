"""Errors of the control plane. Each also subclasses the matching builtin.

A :class:`SpecError` names *where* in the job document the problem is (a dotted field such as
``window.patch_size``) and *why*; the CLI prints it and exits 2, the REST service maps it to 422
(409 for :class:`OutputExistsError`). A document can hold several problems at once: they are all
kept in :attr:`SpecError.errors`, the first one also being :attr:`field` / :attr:`reason`.
"""

from __future__ import annotations

from typing import Any

from workers.errors import OutputExistsError, SpecError

__all__ = ["OutputExistsError", "SpecError"]  # the job-document errors, shared with the engine


class ServiceError(Exception):
    """Base of every error raised by :mod:`service`."""


class PathOutsideRootsError(SpecError, PermissionError):
    """A path in the job resolves (symlinks followed) outside every data root."""


class SchedulerUnavailableError(ServiceError, ConnectionError):
    """The Dask scheduler named by ``--scheduler`` / ``PYTC_SCHEDULER`` cannot be reached."""


class ProbesBusyError(SchedulerUnavailableError):
    """Every model-check slot of the service is taken (``PYTC_MODEL_PROBES``): 503 with Retry-After."""


class JobFailedError(ServiceError, RuntimeError):
    """The job ran but did not finish: a block failed after its retries, or the output is incomplete."""


class JobCancelledError(ServiceError):
    """The job was cancelled before it finished; what is done stays done and a rerun resumes."""


# --- the REST service and its client ---------------------------------------------------------------


class JobNotFoundError(ServiceError, LookupError):
    """No job with this id in the store (HTTP 404)."""


class ModelNotRegisteredError(ServiceError, LookupError):
    """No model registered under this name (HTTP 404; 422 when a job names it)."""


class ModelRegistryFormatError(ServiceError, ValueError):
    """A stored registry entry (``models.json``, the ``models`` table) is not what this project writes."""


class ConflictError(ServiceError):
    """The request contradicts the service's state (HTTP 409); the message says with what."""


class IdempotencyKeyReusedError(ConflictError, ValueError):
    """An ``Idempotency-Key`` sent again with a different body."""


class OutputInUseError(ConflictError, FileExistsError):
    """Another queued or running job writes the same output dataset."""


class JobFinishedError(ConflictError):
    """The job already ended (succeeded, failed or cancelled), so it cannot be cancelled."""


class JobActiveError(ConflictError):
    """The job is still queued or running, so it cannot be deleted (cancel it first)."""


class JobDatabaseError(ServiceError, RuntimeError):
    """The job database (``jobs.sqlite3``) cannot be used by this version: written by a newer
    pytc-service, or not a database at all; the message names the file and the versions."""


class AuthenticationError(ServiceError, PermissionError):
    """A ``/v1`` call without a valid bearer token while ``PYTC_API_TOKENS`` is set (HTTP 401)."""


class ClientError(ServiceError):
    """A call of :class:`service.client.PytcClient` that failed; carries the service's problem.

    ``status`` is the HTTP status (``None`` when the service could not be reached); ``problem`` is
    the RFC 9457 body (``title``, ``detail``, ``errors`` for invalid jobs).
    """

    def __init__(self, message: str, *, status: int | None = None, problem: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.problem: dict[str, Any] = problem or {}
