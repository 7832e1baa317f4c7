"""The job-kind seam: what a kind of job (inference, training, ...) implements, and what it is given.

Everything that handles jobs goes through a :class:`JobKind` and never asks which kind it holds:
``pytc run``, the service's job manager, the REST handlers, the OpenAPI document and the client.
A kind turns its document into a job, says what the job writes, checks what the job names, runs
it on a Dask client with progress and cancel, and summarises its result::

    kind = job_kind(doc)                        # service.kinds: the registry, by the document's ``kind``
    job = kind.parse(doc, parse_env)            # SpecError naming the field; nothing is read
    kind.target(job)                            # what it writes: a second active job there is a 409
    checked = kind.admit(job, admit_env)        # every check of data and model; nothing is written
    result = kind.run(job, run_env, checked)    # JSON, stored as the job's result
    kind.summary(result)                        # what ``pytc run`` prints at the end

A kind may also have ``discard(job, run_env)``, called by the service once a job failed for good
(and with ``run_env`` None when a failed or cancelled job is deleted) (before it
is recorded failed, so no other job writes its target yet): it drops what only a resumed run of
the job would have used, such as the inference engine's scratch. A kind without it leaves all.

``checked`` is what admission learnt (a model's channels, the output's state), handed to ``run``
when both happen in one process a moment apart (``pytc run``), so nothing is checked twice; the
service runs jobs later, after restarts too, and passes None: the run then checks for itself.

A kind reports :class:`~service.progress.Progress` through ``run_env.report`` and stops at a cancel
(``run_env.cancel``) by raising :class:`~service.errors.JobCancelledError`; a run that fails raises
:class:`~service.errors.JobFailedError`, and a problem with what the document names that only the
run could see raises :class:`~service.errors.SpecError`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import BaseModel

from service.progress import Progress
from workers.limits import DEFAULT_LIMITS, Limits

if TYPE_CHECKING:
    from distributed import Client

    from models.ref import ModelRef
    from service.kinds.pool import TaskPool
    from service.store.models import ModelRegistry

J = TypeVar("J")
T = TypeVar("T")

# Runs a small check on a worker, where torch and the data are: ``on_worker(fn, *args)`` is
# ``fn(*args)`` there. The service bounds its time (503 when no worker answers); ``pytc run``
# waits for its own cluster.
WorkerCall = Callable[..., Any]
ModelResolver = Callable[[str], "ModelRef"]


@dataclass(frozen=True)
class Target:
    """What a job writes (a dataset of a container, a checkpoint folder): no two active jobs share one."""

    path: str
    what: str  # the dataset, or what is written in the folder (``checkpoints``)

    @property
    def key(self) -> str:
        return f"{self.path}::{self.what}"

    def __str__(self) -> str:
        return f"{self.path} ({self.what})"

    @classmethod
    def from_key(cls, key: str) -> Target:
        path, _, what = key.rpartition("::")
        return cls(path, what) if path else cls(key, "")


@dataclass(frozen=True)
class Summary:
    """The end of a run as a person reads it: ``lines`` for the log or terminal, ``output`` the one
    path a script wants (``pytc run`` prints it alone on stdout)."""

    lines: tuple[str, ...]
    output: str | None = None


@dataclass(frozen=True)
class ParseEnv:
    """What parsing a document needs: the data roots (resolved), the model registry for
    ``model: {name: ...}`` (None: naming a model is an error), and the admission bounds
    (:mod:`workers.limits`) that sizes are checked against from the document alone."""

    roots: tuple[Path | str, ...]  # local folders resolved, object-store prefixes normalised
    resolve_model: ModelResolver | None = None
    limits: Limits = DEFAULT_LIMITS


@dataclass(frozen=True)
class AdmitEnv:
    """What admission needs: a call on a worker, and the bounds (checked again against the input's
    shape and the model's channels)."""

    on_worker: WorkerCall
    limits: Limits = DEFAULT_LIMITS


@dataclass
class RunEnv:
    """What a run is given. ``dask`` is the Dask client, or what connects it on first use (``pytc
    run``: its embedded cluster then starts only when a kind asks for :attr:`client`). ``local``:
    a pool of this process's threads for the kinds that take a :class:`~service.kinds.pool.TaskPool`
    (``pytc run`` with its one embedded worker); None: their tasks go to the Dask client."""

    dask: Client | Callable[[], Client]
    report: Callable[[Progress], None] = lambda progress: None
    cancel: threading.Event = field(default_factory=threading.Event)
    models: ModelRegistry | None = None  # where a job's ``register_as`` lands
    notice: Callable[[str], None] = lambda text: None  # a line for the person watching (stderr, the log)
    priority: int = 0
    retries: int = 2
    limits: Limits = DEFAULT_LIMITS  # a run that was not just admitted checks its input against them
    local: TaskPool | None = None

    @property
    def client(self) -> Client:
        """The Dask client (connected now if it was not)."""
        if hasattr(self.dask, "submit"):  # a Client; anything else is what connects one
            return self.dask  # type: ignore[return-value]
        return self.dask()  # type: ignore[operator]

    @property
    def pool(self) -> TaskPool:
        """Where a kind's plain tasks run: :attr:`local`, else the Dask client's workers."""
        if self.local is not None:
            return self.local
        from service.kinds.pool import DaskPool

        return DaskPool(self.client)


class JobKind(Protocol[J]):
    """One kind of job. ``name`` is its document's ``kind``; ``document`` the pydantic model that
    parses it, from which the OpenAPI schema is generated."""

    name: str
    document: type[BaseModel]

    def parse(self, doc: Mapping[str, Any], env: ParseEnv) -> J: ...
    def target(self, job: J) -> Target: ...
    def admit(self, job: J, env: AdmitEnv) -> Any: ...
    def run(self, job: J, env: RunEnv, checked: Any = None) -> dict[str, Any]: ...
    def summary(self, result: Mapping[str, Any]) -> Summary: ...


def model_resolver(registry: ModelRegistry, roots: Sequence[Path | str]) -> ModelResolver:
    """``model.name`` -> the registered reference, whose files must lie inside the data roots too."""
    from service.documents.sections import resolve_path, resolved_root

    resolved = [resolved_root(root) for root in roots]

    def resolve(name: str) -> ModelRef:
        ref = registry.get(name).ref  # ModelNotRegisteredError is a LookupError: parsing names the field
        for path in (ref.path, ref.checkpoint):
            if path is not None:
                resolve_path(path, resolved, "model.name")
        return ref

    return resolve
