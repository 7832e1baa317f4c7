"""What the REST handlers reach: the store, the registry, Dask, the job manager, the event feed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.errors import SpecError
from service.http.events import ChangeFeed
from service.http.metrics import ServiceMetrics
from service.http.schemas import ErrorOut, JobLinks, JobOut, ProgressOut
from service.jobs.connection import DaskConnection
from service.jobs.manager import JobManager, ManagerConfig
from service.jobs.submission import ProbeGate, submit_job, worker_call
from service.kinds import job_kind
from service.kinds.base import AdmitEnv, Target
from service.settings import Settings
from service.store.jobs import JobRecord, JobStore
from service.store.models import ModelRegistry
from service.store.sqlite import SqliteJobStore, SqliteModelRegistry


@dataclass
class ServiceState:
    """What the handlers reach: built by the lifespan, kept on ``app.state.pytc``."""

    settings: Settings
    store: JobStore
    models: ModelRegistry
    connection: DaskConnection
    manager: JobManager
    feed: ChangeFeed
    metrics: ServiceMetrics
    probe_gate: ProbeGate | None = None

    def submit(
        self, doc: Mapping[str, Any], idempotency_key: str | None, owner: str | None = None
    ) -> tuple[JobRecord, bool]:
        settings = self.settings
        on_worker = worker_call(
            self.connection, settings.model_check_timeout_s, self.probe_gate, settings.model_probe_timeout_s
        )
        admit_env = AdmitEnv(on_worker, self.manager.parse_env.limits)
        record, created = submit_job(
            doc,
            idempotency_key,
            store=self.store,
            parse_env=self.manager.parse_env,
            admit_env=admit_env,
            owner=owner,
        )
        if created:
            self.feed.bump(record.id)
            self.manager.wake()
        return record, created

    def render(self, record: JobRecord) -> JobOut:
        base = f"/v1/jobs/{record.id}"
        return JobOut(
            id=record.id,
            kind=record.kind,
            state=record.state,
            spec=record.spec,
            target=str(Target.from_key(record.output_key)) if record.output_key else None,
            progress=ProgressOut.model_validate(record.progress or {}),
            created_at=record.created_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            error=ErrorOut.model_validate(record.error) if record.error else None,
            result=record.result,
            summary=_summary(record),
            links=JobLinks(
                job=base,
                events=f"{base}/events",
                cancel=f"{base}/cancel",
                dashboard=self.connection.dashboard_link,
                view=f"{base}/view",
            ),
        )


def open_state(
    settings: Settings, store: JobStore | None = None, models: ModelRegistry | None = None
) -> ServiceState:
    """What the handlers reach; the job store and the model registry default to the service's
    database file (``jobs.sqlite3`` in the state folder)."""
    store = store if store is not None else SqliteJobStore(settings.database_path)
    models = models if models is not None else SqliteModelRegistry(settings.database_path)
    connection = DaskConnection(
        settings.scheduler,
        local_workers=settings.local_workers,
        threads_per_worker=settings.local_threads_per_worker,
        worker_niceness=settings.local_worker_niceness,
    )
    feed, metrics = ChangeFeed(), ServiceMetrics()
    config = ManagerConfig(
        tuple(settings.data_roots),
        settings.max_concurrent_jobs,
        settings.progress_interval_s,
        settings.limits(),
    )
    manager = JobManager(store, models, connection, config, feed, metrics)
    gate = ProbeGate(settings.model_probes, settings.model_probe_timeout_s)
    return ServiceState(settings, store, models, connection, manager, feed, metrics, gate)


def _summary(record: JobRecord) -> list[str] | None:
    """How a succeeded job ended, in its kind's words; None before that, or for a kind this service
    no longer knows (its plugin was removed since)."""
    if record.state != "succeeded" or record.result is None:
        return None
    try:
        return list(job_kind(record.kind).summary(record.result).lines)
    except SpecError:
        return None
